"""Finding an IP-Adapter's files: the family's hub layout, the image encoder whose width fits, and
one-line errors for what is missing, misfit or pickled."""
from __future__ import annotations

import json
import shutil

import pytest

from loraflow.errors import ModelLoadError
from loraflow.models.families import get_family
from loraflow.models.ip_adapter import find_image_encoder, locate_ip_adapter, read_adapter_state_dict
from loraflow.models.tiny_ip_adapter import TINY_ENCODER, save_tiny_ip_adapter


@pytest.fixture(scope="module")
def sdxl_plain(tmp_path_factory):
    return save_tiny_ip_adapter("sdxl", tmp_path_factory.mktemp("ipa") / "IP-Adapter")


def test_h94_layout_adapter_in_sdxl_models_and_vit_h_encoder_in_models(sdxl_plain):
    family = get_family("sdxl")
    files = locate_ip_adapter(sdxl_plain, family)
    assert files.weights == sdxl_plain / "sdxl_models" / "ip-adapter_sdxl_vit-h.safetensors"
    state = read_adapter_state_dict(files.weights)
    assert find_image_encoder(files, family, state) == sdxl_plain / "models" / "image_encoder"
    # the file itself finds the same encoder (two folders up), and so does a folder of just the files
    assert find_image_encoder(locate_ip_adapter(files.weights, family), family, state) == sdxl_plain / "models" / "image_encoder"


def test_an_encoder_of_another_width_is_skipped_then_named(sdxl_plain, tmp_path):
    family = get_family("sdxl")
    folder = tmp_path / "IP-Adapter"
    shutil.copytree(sdxl_plain, folder)
    # a bigG-like encoder next to the adapter (sdxl_models/image_encoder) with another projection width
    wrong = folder / "sdxl_models" / "image_encoder"
    shutil.copytree(folder / "models" / "image_encoder", wrong)
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "projection_dim": 8}))
    files = locate_ip_adapter(folder, family)
    state = read_adapter_state_dict(files.weights)
    assert find_image_encoder(files, family, state) == folder / "models" / "image_encoder"  # the one that fits
    shutil.rmtree(folder / "models")
    with pytest.raises(ModelLoadError) as e:
        find_image_encoder(files, family, state)
    width = TINY_ENCODER["projection_dim"]
    assert f"image_embeds of width {width}" in str(e.value) and f"{wrong} (8)" in str(e.value)
    assert "\n" not in str(e.value)


def test_pickled_adapter_needs_allow_pickle_and_then_reads(sdxl_plain, tmp_path):
    import torch
    from safetensors.torch import load_file

    flat = load_file(str(locate_ip_adapter(sdxl_plain, get_family("sdxl")).weights))
    nested = {"image_proj": {}, "ip_adapter": {}}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        nested[head][rest] = value
    path = tmp_path / "ip_adapter_plus_general.bin"
    torch.save(nested, path)  # the original repositories' .bin layout: two nested dicts
    with pytest.raises(ModelLoadError, match="--allow-pickle"):
        read_adapter_state_dict(path)
    read = read_adapter_state_dict(path, allow_pickle=True)
    assert set(read) == {"image_proj", "ip_adapter"}
    assert {f"{h}.{k}" for h in read for k in read[h]} == set(flat)
    assert all(torch.equal(read[h][k], flat[f"{h}.{k}"]) for h in read for k in read[h])


def test_broken_encoder_files_and_unknown_adapter_kinds_are_one_line_naming_the_file(sdxl_plain, tmp_path):
    """A cut-short download or a foreign file is a ModelLoadError naming it, not a parser's traceback."""
    from safetensors.torch import load_file, save_file

    from loraflow.models.ip_adapter import load_ip_adapter_files

    family = get_family("sdxl")
    folder = tmp_path / "IP-Adapter"
    shutil.copytree(sdxl_plain, folder)
    files = locate_ip_adapter(folder, family)
    encoder = folder / "models" / "image_encoder"

    def error() -> str:
        with pytest.raises(ModelLoadError) as e:
            load_ip_adapter_files(files, family, dtype=None, device="cpu")
        assert "\n" not in str(e.value), str(e.value)
        return str(e.value)

    weights = (encoder / "model.safetensors").read_bytes()
    (encoder / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert str(encoder) in error()
    (encoder / "model.safetensors").write_bytes(weights)
    (encoder / "config.json").write_text("{not json")
    assert str(encoder / "config.json") in error()
    faceid = {k: v for k, v in load_file(str(files.weights)).items() if not k.startswith("image_proj.proj")}
    save_file({**faceid, "image_proj.other.weight": next(iter(faceid.values())).clone()}, str(files.weights))
    assert files.weights.name in error() and "not supported" in error()
