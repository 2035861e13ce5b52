"""Loading models from disk: round trip, family detection, safety and clear errors."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from loraflow.errors import ModelLoadError
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import GenerationSession
from loraflow.models.loading import detect_folder_family, load_pipeline

FAMILIES = ("sd15", "sdxl", "kolors")


@pytest.mark.parametrize("family", FAMILIES)
def test_save_reload_generate_equals_in_memory(tiny_model_dir, tiny_session, family):
    folder = tiny_model_dir(family)
    assert (folder / "model_index.json").is_file()
    assert detect_folder_family(folder) == family
    cfg = GenerateConfig(model=str(folder), prompt="a red circle", steps=2, height=64, width=72, seed=3)
    from_disk = GenerationSession.from_options(cfg)
    assert from_disk.family.name == family
    image = from_disk.generate(cfg)[0].image
    assert image.size == (72, 64)
    in_memory = tiny_session(family).generate(cfg.model_copy(update={"model": f"tiny:{family}"}))[0].image
    # weights are bit-identical; float noise from a different memory layout may move a pixel by 1/255
    assert np.abs(np.asarray(image, dtype=np.int16) - np.asarray(in_memory, dtype=np.int16)).max() <= 1


def test_family_can_be_forced_and_contradictions_are_refused(tiny_model_dir):
    loaded = load_pipeline(str(tiny_model_dir("sdxl")), family="sdxl", device="cpu")
    assert loaded.family.name == "sdxl"
    with pytest.raises(ModelLoadError, match="contradicts"):
        load_pipeline("tiny:sdxl", family="sd15")


def test_no_model_is_the_demo_model_and_says_so(capsys):
    loaded = load_pipeline(None, device="cpu")
    assert loaded.name == "loraflow-demo" and loaded.family.name == "sdxl"
    err = capsys.readouterr().err
    assert "built-in demo model" in err and "pass --model" in err


def test_missing_model_path_and_hub_id_hint():
    with pytest.raises(ModelLoadError, match="models download Kwai-Kolors/Kolors-diffusers"):
        load_pipeline("Kwai-Kolors/Kolors-diffusers")


def test_missing_weights_names_the_file_and_source(tiny_model_dir, tmp_path):
    broken = tmp_path / "kolors-partial"
    shutil.copytree(tiny_model_dir("kolors"), broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as e:
        load_pipeline(str(broken), device="cpu")
    msg = str(e.value)
    assert "unet" in msg and "diffusion_pytorch_model.safetensors" in msg and "Kolors-diffusers" in msg
    assert "\n" not in msg


def test_missing_component_folder(tiny_model_dir, tmp_path):
    broken = tmp_path / "sdxl-partial"
    shutil.copytree(tiny_model_dir("sdxl"), broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(ModelLoadError, match="text_encoder_2"):
        load_pipeline(str(broken), device="cpu")


def test_missing_weight_shard(tiny_model_dir, tmp_path):
    broken = tmp_path / "sharded"
    shutil.copytree(tiny_model_dir("sd15"), broken)
    index = {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model-00001-of-00002.safetensors"}}
    (broken / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="00001-of-00002"):
        load_pipeline(str(broken), device="cpu")


def test_pickle_checkpoint_refused_without_flag(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really a pickle")
    with pytest.raises(ModelLoadError, match="refusing to unpickle model.ckpt.*--allow-pickle"):
        load_pipeline(str(ckpt))


def test_pickle_only_folder_refused_without_flag(tiny_model_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir("sd15"), folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), folder / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="only pickle weights"):
        load_pipeline(str(folder), device="cpu")
    loaded = load_pipeline(str(folder), device="cpu", allow_pickle=True)  # weights_only=True inside
    assert loaded.family.name == "sd15"


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        load_pipeline("tiny:sd15", dtype="float8")


def test_vae_override_from_folder(tiny_model_dir):
    loaded = load_pipeline("tiny:sdxl", vae=str(tiny_model_dir("sdxl") / "vae"), device="cpu")
    assert loaded.extras["vae"] == "vae"
    with pytest.raises(ModelLoadError, match="VAE not found"):
        load_pipeline("tiny:sdxl", vae="/nonexistent/vae")



def test_vae_override_from_single_files(tiny_model_dir, tmp_path, monkeypatch):
    """sdxl-vae-fp16-fix ships a lone diffusers-layout file; A1111 VAEs are original (LDM) layout."""
    import torch
    from ldm_convert import vae_to_ldm
    from safetensors.torch import save_file

    from loraflow.models import single_file

    vae = load_pipeline("tiny:sdxl", device="cpu").pipe.vae
    tiny_dir = tiny_model_dir("sdxl")
    monkeypatch.setattr(single_file, "shipped_config_dir", lambda family: tiny_dir)  # the tiny VAE's config
    files = {"diffusers": tmp_path / "diffusion_pytorch_model.safetensors", "ldm": tmp_path / "vae.safetensors"}
    save_file(vae.state_dict(), files["diffusers"])
    save_file({f"first_stage_model.{k}": v.contiguous() for k, v in vae_to_ldm(vae).items()}, files["ldm"])
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    expected = vae.decode(vae.encode(x).latent_dist.mean).sample
    for kind, path in files.items():
        loaded = load_pipeline("tiny:sdxl", vae=str(path), device="cpu").pipe.vae
        got = loaded.decode(loaded.encode(x).latent_dist.mean).sample
        assert torch.allclose(got, expected, atol=1e-5), kind
    bad = tmp_path / "vae.ckpt"
    bad.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="refusing to unpickle VAE vae.ckpt"):
        load_pipeline("tiny:sdxl", vae=str(bad))
