"""Single-file checkpoints (A1111/Civitai layout): round trip, family detection, safety, clear errors,
and the shipped real-size configs and CLIP tokenizer. Tiny models only; nothing is downloaded."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from loraflow.errors import ModelLoadError
from loraflow.models.single_file import (
    CONFIG_ROOT,
    clip_tokenizer,
    detect_checkpoint_family,
    load_single_file,
)
from loraflow.models.tiny import build_tiny_pipeline

sys.path.insert(0, str(Path(__file__).parent))
from ldm_convert import pipeline_to_original  # noqa: E402

FAMILIES = ("sd15", "sdxl")
COMPONENTS = {"sd15": ("unet", "vae", "text_encoder"), "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2")}


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """`original(family)` -> (in-memory tiny pipeline, its single-file checkpoint path)."""
    cache = {}

    def get(family):
        if family not in cache:
            pipe = build_tiny_pipeline(family)
            path = tmp_path_factory.mktemp(f"single-{family}") / f"tiny-{family}.safetensors"
            save_file(pipeline_to_original(pipe, family), str(path))
            cache[family] = (pipe, path)
        return cache[family]

    return get


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _write(path: Path, keys: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    return path


def _generate(pipe):
    out = pipe(
        "a photo of a cat", negative_prompt="blurry", num_inference_steps=2, height=64, width=64,
        generator=torch.Generator().manual_seed(7), output_type="np",
    )
    return out.images


# ---- round trip ------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_single_file_loads_the_same_model(original, tiny_model_dir, no_network, family):
    pipe, path = original(family)
    assert detect_checkpoint_family(path) == family
    loaded = load_single_file(path, family, dtype=torch.float32, device="cpu", config_dir=tiny_model_dir(family))
    assert type(loaded) is type(pipe)
    for name in COMPONENTS[family]:
        want, got = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    loaded.set_progress_bar_config(disable=True)
    pipe.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_generate(loaded), _generate(pipe), atol=1e-5)


def test_dtype_is_applied(original, tiny_model_dir):
    _, path = original("sd15")
    loaded = load_single_file(path, "sd15", dtype=torch.bfloat16, config_dir=tiny_model_dir("sd15"))
    assert loaded.unet.dtype == loaded.vae.dtype == loaded.text_encoder.dtype == torch.bfloat16


# ---- detection -------------------------------------------------------------------------------
def test_detects_what_a_file_is_without_loading_it(tmp_path):
    unet_key = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    cases = {
        "kohya-lora": ({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": (4, 8)}, "--lora"),
        "peft-lora": ({"unet.down_blocks.0.attentions.0.proj_in.lora_A.weight": (4, 8)}, "--lora"),
        "sd2": ({"cond_stage_model.model.positional_embedding": (77, 8)}, "2.x"),
        "refiner": ({"conditioner.embedders.0.model.text_projection": (8, 8)}, "refiner"),
        "vae": ({"first_stage_model.encoder.conv_in.weight": (8, 3, 3, 3)}, "--vae"),
        "diffusers-unet": ({"conv_in.weight": (8, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": (8, 8, 3, 3)}, "diffusers"),
        "inpaint": ({"model.diffusion_model.input_blocks.0.0.weight": (8, 9, 3, 3)}, "9-channel"),
    }
    for name, (keys, message) in cases.items():
        with pytest.raises(ModelLoadError, match=message) as e:
            detect_checkpoint_family(_write(tmp_path / f"{name}.safetensors", keys))
        assert name in str(e.value) and "\n" not in str(e.value)
    assert detect_checkpoint_family(_write(tmp_path / "unknown.safetensors", {"foo.weight": (2, 2)})) is None
    # UNet-only original checkpoints: the family comes from the cross-attention width
    assert detect_checkpoint_family(_write(tmp_path / "u15.safetensors", {unet_key: (8, 768)})) == "sd15"
    assert detect_checkpoint_family(_write(tmp_path / "uxl.safetensors", {unet_key: (8, 2048)})) == "sdxl"


# ---- safety ----------------------------------------------------------------------------------
def test_pickle_is_refused_unless_allowed_and_then_weights_only(original, tiny_model_dir, tmp_path):
    pipe, path = original("sd15")
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(path)), "global_step": 10}, ckpt)
    for call in (lambda: detect_checkpoint_family(ckpt), lambda: load_single_file(ckpt, "sd15")):
        with pytest.raises(ModelLoadError, match="refusing to unpickle tiny.ckpt.*--allow-pickle"):
            call()
    assert detect_checkpoint_family(ckpt, allow_pickle=True) == "sd15"
    loaded = load_single_file(ckpt, "sd15", allow_pickle=True, config_dir=tiny_model_dir("sd15"))
    assert torch.equal(loaded.unet.conv_in.weight, pipe.unet.conv_in.weight)

    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "obj": socket.AddressFamily}, evil)  # not a plain tensor dict
    with pytest.raises(ModelLoadError, match="weights-only"):
        load_single_file(evil, "sd15", allow_pickle=True, config_dir=tiny_model_dir("sd15"))


# ---- broken files ----------------------------------------------------------------------------
def test_truncated_file_is_named_with_its_sizes(original, tiny_model_dir, tmp_path):
    _, path = original("sdxl")
    cut = tmp_path / "cut.safetensors"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    for call in (lambda: detect_checkpoint_family(cut), lambda: load_single_file(cut, "sdxl", config_dir=tiny_model_dir("sdxl"))):
        with pytest.raises(ModelLoadError, match=r"cut.safetensors: file is truncated \([\d,]+ of [\d,]+ bytes\)"):
            call()
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="garbage.safetensors: not a readable"):
        detect_checkpoint_family(garbage)


def test_partial_checkpoints_name_what_is_missing(original, tiny_model_dir, tmp_path):
    pipe, _ = original("sdxl")
    state = pipeline_to_original(pipe, "sdxl")
    no_vae = {k: v for k, v in state.items() if not k.startswith("first_stage_model.")}
    save_file(no_vae, str(tmp_path / "novae.safetensors"))
    with pytest.raises(ModelLoadError, match=r"novae.safetensors: no VAE weights \(first_stage_model\.\*\)"):
        load_single_file(tmp_path / "novae.safetensors", "sdxl", config_dir=tiny_model_dir("sdxl"))

    one_less = dict(state)
    del one_less["model.diffusion_model.out.2.weight"]
    save_file(one_less, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ModelLoadError, match="partial.safetensors: the UNet .* incomplete, 1 weights missing .*conv_out.weight"):
        load_single_file(tmp_path / "partial.safetensors", "sdxl", config_dir=tiny_model_dir("sdxl"))


def test_weights_of_another_architecture_are_a_clear_error(original):
    _, path = original("sd15")  # tiny weights against the shipped real-size SD1.5 configs
    with pytest.raises(ModelLoadError, match="tiny-sd15.safetensors: the unet weights do not fit the sd15 config") as e:
        load_single_file(path, "sd15")
    assert "\n" not in str(e.value)


def test_unsupported_family_and_missing_config(tmp_path, original):
    _, path = original("sd15")
    with pytest.raises(ModelLoadError, match="'kolors' are not supported.*Kolors-diffusers"):
        load_single_file(path, "kolors")
    with pytest.raises(ModelLoadError, match="lacks model_index.json"):
        load_single_file(path, "sd15", config_dir=tmp_path)


# ---- shipped configs and tokenizer -----------------------------------------------------------
@pytest.mark.parametrize(
    "family, unet_params",
    [("sd15", 859_520_964), ("sdxl", 2_567_463_684)],  # published sizes of the real UNets
)
def test_shipped_configs_build_the_real_architecture(family, unet_params):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(model):
        return sum(p.numel() for p in model.parameters())

    root = CONFIG_ROOT / family
    with init_empty_weights():
        assert count(UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))) == unet_params
        assert count(AutoencoderKL.from_config(AutoencoderKL.load_config(root / "vae"))) == 83_653_863
        assert count(CLIPTextModel(CLIPTextConfig.from_pretrained(root / "text_encoder"))) == 123_060_480  # ViT-L/14
        if family == "sdxl":
            config = CLIPTextConfig.from_pretrained(root / "text_encoder_2")  # OpenCLIP bigG/14 text tower
            assert (config.hidden_size, config.num_hidden_layers, config.projection_dim) == (1280, 32, 1280)
            assert count(CLIPTextModelWithProjection(config)) == 694_659_840


def test_shipped_clip_tokenizer_matches_real_clip():
    tok = clip_tokenizer()
    assert len(tok) == 49408
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token_id == 49407
    tok_2 = clip_tokenizer(pad_token="!")  # SDXL's tokenizer_2 (OpenCLIP) pads with "!" = id 0
    padded = tok_2("a cat", padding="max_length").input_ids
    assert len(padded) == 77 and padded[:5] == [49406, 320, 2368, 49407, 0]
