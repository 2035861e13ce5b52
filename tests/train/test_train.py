"""End-to-end runs on the tiny SDXL model (CPU, 64x64): learning, output files, caches, failures."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from train_helpers import base_config
from loraflow.train.trainer import TrainingDiverged, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shapes_dataset):
    tmp = tmp_path_factory.mktemp("run")
    config = base_config(tmp, shapes_dataset, max_steps=40, learning_rate=3e-2, save_format="kohya+diffusers",
                         caption_prefix="shp, ")
    return train(config)


def test_loss_goes_down(trained):
    losses = [v for _, v in trained.losses]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.95 * first, (first, last)


def test_outputs_written(trained):
    out = trained.output
    assert (out / "config.yaml").is_file() and (out / "loss.png").is_file()
    assert trained.lora_path == out / "lora.safetensors"
    assert trained.diffusers_path.is_file()


def test_tensorboard_logs_without_another_install(trained):
    """TensorBoard is in the default install: the run's loss and lr are there, one point per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained.output / "logs")).Reload()
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == [step for step, _ in trained.losses]
    assert [e.value for e in loss] == pytest.approx([value for _, value in trained.losses], rel=1e-6)
    assert len(events.Scalars("train/lr")) == len(loss)


def test_kohya_keys_alpha_and_metadata(trained):
    with safe_open(trained.lora_path, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
        alpha = f.get_tensor(next(k for k in keys if k.endswith(".alpha")))
        down = f.get_tensor(next(k for k in keys if k.endswith(".lora_down.weight")))
    assert all(k.startswith("lora_unet_") for k in keys)
    assert all(k.endswith((".alpha", ".lora_down.weight", ".lora_up.weight")) for k in keys)
    # SDXL-class UNets use SGM block names, as kohya-ss / A1111 / ComfyUI expect
    assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.") for k in keys)
    assert any("_to_out_0." in k for k in keys) and not any("down_blocks" in k for k in keys)
    assert alpha.item() == 4.0 and down.dtype == torch.float16 and down.shape[0] == 4
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "4.0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert json.loads(meta["ss_tag_frequency"])["train"]["shp"] == 24


def _unet_inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(2, 4, 8, 8, generator=g)
    embeds = torch.randn(2, 77, 64, generator=g)
    pooled = torch.randn(2, 32, generator=g)
    time_ids = torch.tensor([[64, 64, 0, 0, 64, 64]] * 2, dtype=torch.float32)
    return sample, torch.tensor([10, 500]), embeds, {"text_embeds": pooled, "time_ids": time_ids}


def _predict(unet):
    sample, t, embeds, added = _unet_inputs()
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample


@pytest.mark.parametrize("which", ["kohya", "diffusers"])
def test_saved_file_loads_in_diffusers_and_matches(trained, which):
    from loraflow.models.tiny import build_tiny_pipeline

    expected = _predict(trained.model.unet)
    pipe = build_tiny_pipeline("sdxl")  # same seed: the same base weights
    base = _predict(pipe.unet)
    path = trained.lora_path if which == "kohya" else trained.diffusers_path
    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name="trained")
    got = _predict(pipe.unet)
    assert (expected - base).abs().max() > 1e-3  # the LoRA does something
    # fp16 storage: agree to half precision, far closer than the LoRA's own effect
    assert (got - expected).abs().max() < 2e-2 * (expected - base).abs().max() + 1e-3


def test_saved_file_loads_with_loraflow_loader(trained):
    from loraflow.models.lora.apply import apply_loras
    from loraflow.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")
    apply_loras(pipe, [(trained.lora_path, 1.0)], "sdxl")
    expected = _predict(trained.model.unet)
    base = _predict(build_tiny_pipeline("sdxl").unet)
    assert (_predict(pipe.unet) - expected).abs().max() < 2e-2 * (expected - base).abs().max() + 1e-3


def test_caches_reused_then_invalidated(tmp_path, shapes_dataset):
    first = train(base_config(tmp_path, shapes_dataset, max_steps=1, output=str(tmp_path / "a")))
    assert first.stats["vae_encode_calls"] > 0 and first.stats["text_encode_calls"] > 0
    second = train(base_config(tmp_path, shapes_dataset, max_steps=1, output=str(tmp_path / "b")))
    assert second.stats["vae_encode_calls"] == 0 and second.stats["text_encode_calls"] == 0
    # a new caption prefix re-encodes text only; a new resolution re-encodes latents
    third = train(base_config(tmp_path, shapes_dataset, max_steps=1, output=str(tmp_path / "c"),
                              caption_prefix="x, ", resolution=128, bucket_step=64))
    assert third.stats["vae_encode_calls"] > 0 and third.stats["text_encode_calls"] > 0


def test_random_crop_turns_latent_cache_off(tmp_path, shapes_dataset, capsys):
    result = train(base_config(tmp_path, shapes_dataset, max_steps=2, random_crop=True, random_flip=True))
    assert result.stats["latent_cache"] is False and result.stats["vae_encode_calls"] == 2
    assert "latent caching is off because random_crop" in capsys.readouterr().out


def test_flip_caches_both_variants(tmp_path, shapes_dataset):
    result = train(base_config(tmp_path, shapes_dataset, max_steps=2, random_flip=True, batch_size=8))
    assert result.stats["vae_encode_calls"] == 6  # 24 images x 2 variants / batch 8


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, shapes_dataset, monkeypatch):
    from loraflow.train import checkpoint, objective

    real = objective.diffusion_loss
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(objective, "diffusion_loss", flaky)
    config = base_config(tmp_path, shapes_dataset, max_steps=6, save_every=2)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 4.*step-000002"):
        train(config)
    (last,) = checkpoint.list_checkpoints(tmp_path / "out")
    with safe_open(last / "lora.safetensors", "pt") as f:
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())
