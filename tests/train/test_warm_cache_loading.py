"""A second run over cached data loads the UNet alone: the VAE and text encoders are never built,
and the LoRA it trains is the cold run's, bit for bit (every step reads the cache either way)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from train_helpers import base_config
from loraflow.train.trainer import train

ENCODER_CLASSES = {"AutoencoderKL", "CLIPTextModel", "CLIPTextModelWithProjection", "ChatGLMModel"}


@pytest.fixture
def built(monkeypatch) -> list[str]:
    """Class names of every torch module constructed from now on."""
    names: list[str] = []
    init = torch.nn.Module.__init__

    def spy(self, *args, **kwargs):
        names.append(type(self).__name__)
        init(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "__init__", spy)
    return names


def _lora(result) -> dict:
    return get_peft_model_state_dict(result.model.unet)


def _assert_equal(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _config(tmp_path: Path, dataset: Path, model: Path, run: str, **overrides) -> dict:
    settings = dict(model=str(model), output=str(tmp_path / run), max_steps=3, random_flip=True, caption_dropout=0.2)
    return base_config(tmp_path, dataset, **{**settings, **overrides})


@pytest.mark.parametrize("family", ["sdxl", "sd15", "kolors"])
def test_warm_cache_never_builds_the_encoders_and_trains_the_same(tmp_path, shapes_dataset, tiny_model_dir, family,
                                                                  built):
    model = tiny_model_dir(family)
    cold = train(_config(tmp_path, shapes_dataset, model, "cold"))
    assert cold.stats["encoders_loaded"] and cold.stats["vae_encode_calls"] > 0
    assert ENCODER_CLASSES & set(built), "the spy sees the encoders being built"
    built.clear()
    warm = train(_config(tmp_path, shapes_dataset, model, "warm"))
    assert "UNet2DConditionModel" in built and not ENCODER_CLASSES & set(built)
    assert not warm.stats["encoders_loaded"]
    assert warm.stats["vae_encode_calls"] == 0 and warm.stats["text_encode_calls"] == 0
    assert warm.model.pipe.vae is None and all(getattr(warm.model.pipe, n) is None
                                               for n in warm.model.family.text_encoder_names)
    _assert_equal(_lora(cold), _lora(warm))
    _assert_equal(load_file(tmp_path / "cold" / "lora.safetensors"), load_file(tmp_path / "warm" / "lora.safetensors"))


def test_partial_cache_loads_the_encoders_and_fills_the_gaps(tmp_path, shapes_dataset, tiny_model_dir):
    model = tiny_model_dir("sdxl")
    cold = train(_config(tmp_path, shapes_dataset, model, "cold"))
    for kind in ("latents", "text"):
        first = sorted((tmp_path / "cache" / kind).rglob("*.safetensors"))[0]
        first.write_bytes(b"damaged")  # unreadable counts as missing
    partial = train(_config(tmp_path, shapes_dataset, model, "partial"))
    assert partial.stats["encoders_loaded"]
    assert partial.stats["vae_encode_calls"] == 1 and partial.stats["text_encode_calls"] == 1
    assert partial.model.pipe.vae is None  # released again after precaching
    # the re-encoded latent went through the VAE alone, not in its batch of 4: float rounding differs
    _assert_equal(_lora(cold), _lora(partial), atol=1e-5)
    assert not train(_config(tmp_path, shapes_dataset, model, "warm")).stats["encoders_loaded"]


def test_validation_prompt_loads_the_full_pipeline(tmp_path, shapes_dataset, tiny_model_dir):
    model = tiny_model_dir("sd15")
    train(_config(tmp_path, shapes_dataset, model, "cold", max_steps=1))
    result = train(_config(tmp_path, shapes_dataset, model, "sampled", max_steps=1, validation_prompt=["a red circle"],
                           validation_steps=2))
    assert result.stats["encoders_loaded"] and result.stats["vae_encode_calls"] == 0
    assert result.model.pipe.vae is not None and list((tmp_path / "sampled" / "samples").glob("*.png"))


def test_text_encoder_training_loads_the_text_encoders(tmp_path, shapes_dataset, tiny_model_dir):
    model = tiny_model_dir("sd15")
    train(_config(tmp_path, shapes_dataset, model, "cold", max_steps=1))
    result = train(_config(tmp_path, shapes_dataset, model, "te", max_steps=1, train_text_encoder=True))
    assert result.stats["encoders_loaded"] and not result.stats["text_cache"]
    assert result.stats["vae_encode_calls"] == 0 and result.model.text_encoders


def test_resume_on_a_warm_cache_equals_uninterrupted(tmp_path, shapes_dataset, tiny_model_dir):
    model = tiny_model_dir("sdxl")
    full = train(_config(tmp_path, shapes_dataset, model, "full", max_steps=4, save_every=2))  # fills the cache

    class Stop(Exception):
        pass

    def stop_at_3(step, total):  # after the step-2 checkpoint
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(_config(tmp_path, shapes_dataset, model, "resumed", max_steps=4, save_every=2), progress=stop_at_3)
    resumed = train(_config(tmp_path, shapes_dataset, model, "resumed", max_steps=4, save_every=2, resume="latest"))
    assert not resumed.stats["encoders_loaded"]
    _assert_equal(_lora(full), _lora(resumed))


def test_tiny_models_drop_the_encoders_on_a_warm_cache(tmp_path, shapes_dataset):
    """tiny:* models are built in-process in one piece; a warm run drops the encoders unused."""
    train(base_config(tmp_path, shapes_dataset, max_steps=1, output=str(tmp_path / "a")))
    warm = train(base_config(tmp_path, shapes_dataset, max_steps=1, output=str(tmp_path / "b")))
    assert warm.stats["vae_encode_calls"] == 0 and warm.stats["text_encode_calls"] == 0
    assert warm.model.pipe.vae is None and warm.model.pipe.text_encoder is None


def test_cache_keys_follow_the_weight_files_not_the_folder(tmp_path, tiny_model_dir):
    from loraflow.train.config import TrainConfig
    from loraflow.train.model_setup import identity_from_files

    def identity(folder, **kw):
        return identity_from_files(TrainConfig(model=str(folder), dataset="unused", **kw))

    original = identity(tiny_model_dir("sdxl"))
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir("sdxl"), copy)
    assert (identity(copy).vae_key, identity(copy).text_key) == (original.vae_key, original.text_key)
    assert identity(copy, mixed_precision="bf16").text_key != original.text_key
    weights = copy / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    name = sorted(state)[0]
    state[name] = state[name] + 1
    save_file(state, weights)
    changed = identity(copy)
    assert changed.vae_key != original.vae_key and changed.text_key == original.text_key
    assert identity("tiny:sdxl") is None  # in-process models are fingerprinted once built
