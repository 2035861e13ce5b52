"""The training objective by value, on one real step of `train()`: the UNet's input is the DDPM
forward process of the latents, the loss is the MSE to the right target for the prediction type
(the noise for epsilon, `DDPMScheduler.get_velocity` for v-prediction), the noise offset is a
per-sample, per-channel constant proportional to `noise_offset`, and a dropped caption is the
empty prompt's embedding.

Instrumented, not re-implemented: diffusers' `DDPMScheduler.add_noise` and the UNet's forward are
wrapped to record what the trainer handed them; expected values come from a scheduler built here
from the SDXL base model's published config and from diffusers' own prompt encoding."""
from __future__ import annotations

import pytest
import torch

from train_helpers import base_config
from loraflow.train.trainer import train

# stabilityai/stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json (betas only)
SDXL_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
CAPTIONS = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]


@pytest.fixture
def one_step(tmp_path, shapes_dataset, monkeypatch):
    """`one_step(**config)` -> (loss, record): one optimizer step of one micro-batch of 2 images."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    add_noise, forward = DDPMScheduler.add_noise, UNet2DConditionModel.forward

    def run(name, **overrides):
        record = {}

        def recording_add_noise(self, original, noise, timesteps):
            record.update(x0=original.clone(), noise=noise.clone(), t=timesteps.clone())
            return add_noise(self, original, noise, timesteps)

        def recording_forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs):
            out = forward(self, sample, timestep, encoder_hidden_states, *args, **kwargs)
            pred = out[0] if isinstance(out, tuple) else out.sample
            record.update(sample=sample.detach().clone(), embeds=encoder_hidden_states.detach().clone(),
                          pred=pred.detach().clone(), calls=record.get("calls", 0) + 1)
            return out

        monkeypatch.setattr(DDPMScheduler, "add_noise", recording_add_noise)
        monkeypatch.setattr(UNet2DConditionModel, "forward", recording_forward)
        try:
            config = base_config(tmp_path / name, shapes_dataset, max_steps=1, batch_size=2, **overrides)
            result = train(config)
        finally:
            monkeypatch.setattr(DDPMScheduler, "add_noise", add_noise)
            monkeypatch.setattr(UNet2DConditionModel, "forward", forward)
        assert record["calls"] == 1  # one micro-batch, one UNet call
        return result.losses[0][1], record

    return run


def reference_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SDXL_BETAS)


def check_input_and_loss(loss, r, target):
    noisy = reference_scheduler().add_noise(r["x0"], r["noise"], r["t"])
    assert torch.allclose(r["sample"], noisy, atol=1e-6)
    expected = torch.nn.functional.mse_loss(r["pred"].float(), target.float()).item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_targets_noise_offset_and_caption_dropout_by_value(one_step):
    eps_loss, eps = one_step("eps", prediction_type="epsilon")
    check_input_and_loss(eps_loss, eps, eps["noise"])  # epsilon: the target is the noise

    v_loss, v = one_step("v", prediction_type="v_prediction", noise_offset=0.5, caption_dropout=1.0)
    velocity = reference_scheduler().get_velocity(v["x0"], v["noise"], v["t"])  # sqrt(ab) eps - sqrt(1-ab) x0
    check_input_and_loss(v_loss, v, velocity)
    assert not torch.allclose(velocity, v["noise"], atol=1e-3)  # the two targets really differ
    assert torch.equal(v["x0"], eps["x0"])  # same seed: same batch and latents

    # noise offset (Guttenberg 2023): noise + offset * N(0, 1) per (sample, channel), same seed otherwise
    _, double = one_step("v2", prediction_type="v_prediction", noise_offset=1.0, caption_dropout=1.0)
    shift = v["noise"] - eps["noise"]  # (B, C, h, w)
    per_channel = shift[:, :, :1, :1]
    assert torch.allclose(shift, per_channel.expand_as(shift), atol=1e-6)  # constant over h, w
    assert per_channel.flatten().unique().numel() == per_channel.numel()  # a different draw per (b, c)
    assert torch.allclose(double["noise"] - eps["noise"], 2 * shift, atol=1e-6)  # proportional to the offset

    # caption dropout 1: every caption is the empty prompt; 0: none is
    from loraflow.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl")
    with torch.no_grad():
        empty = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)[0]
        captions = pipe.encode_prompt(CAPTIONS, device="cpu", do_classifier_free_guidance=False)[0]
    assert all(torch.allclose(e, empty[0], atol=1e-5) for e in v["embeds"])
    for e in eps["embeds"]:
        assert not torch.allclose(e, empty[0], atol=1e-3)
        assert any(torch.allclose(e, c, atol=1e-5) for c in captions)
