"""The one denoising engine (`loraflow.generate.engine`): `generate` and latents-in sampling are the same
loop, and a schedule split into windows (ComfyUI's KSamplerAdvanced base + refiner pattern) equals the
run in one piece. Tiny in-process models, 4 steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from loraflow.generate.engine import LatentSampling, sample_latents
from loraflow.generate.options import GenerateConfig

STEPS = 4


def request(session, latents, **kw) -> LatentSampling:
    pos, neg = session.encode(["an astronaut, portrait", "blurry"])
    return LatentSampling(latents, pos, neg, seed=7, steps=STEPS, guidance_scale=4.0, sampler="Euler", **kw)


def empty_latent(session, size: int = 64):
    pipe = session.pipe
    return torch.zeros((1, pipe.unet.config.in_channels, size // pipe.vae_scale_factor, size // pipe.vae_scale_factor))


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_latent_sampling_from_an_empty_latent_is_text_to_image(tiny_session, family):
    """Same seed, sampler and prompts: the latents the sampler nodes get decode to `generate`'s image."""
    s = tiny_session(family)
    cfg = GenerateConfig(model=f"tiny:{family}", prompt="an astronaut, portrait", negative_prompt="blurry", seed=7,
                         num_inference_steps=STEPS, guidance_scale=4.0, height=64, width=64, scheduler="Euler")
    image = np.asarray(s.generate(cfg)[0].image, dtype=np.int16)
    latents = sample_latents(s, request(s, empty_latent(s)))
    vae = s.pipe.vae
    with torch.no_grad():
        decoded = vae.decode(latents / vae.config.scaling_factor).sample  # (1, 3, H, W) in [-1, 1]
    pixels = ((decoded[0].permute(1, 2, 0) / 2 + 0.5).clamp(0, 1) * 255).round().numpy().astype(np.int16)
    assert np.abs(pixels - image).max() <= 1  # uint8 rounding only


def test_split_schedule_equals_one_run(tiny_session):
    """Steps [0, 2) keeping the leftover noise, then [2, 4) without adding noise == steps [0, 4)."""
    s = tiny_session("sdxl")
    whole = sample_latents(s, request(s, empty_latent(s)))
    first = sample_latents(s, request(s, empty_latent(s), end_step=2, full_denoise=False))
    second = sample_latents(s, request(s, first, start_step=2, add_noise=False))
    assert torch.allclose(second, whole, atol=1e-4), (second - whole).abs().max()
    assert not torch.allclose(first, whole, atol=1e-2)  # the first half alone is still noisy


def test_stopping_early_with_the_noise_removed(tiny_session):
    """end_step with full_denoise: the window's last Euler step goes to noise level 0 (ComfyUI
    force_full_denoise), i.e. to the model's clean estimate x0 = x1 - sigma1 * d. The estimate is
    recovered from two runs that keep their noise: x2 = x1 + d * (sigma2 - sigma1)."""
    s = tiny_session("sdxl")
    x1 = sample_latents(s, request(s, empty_latent(s), end_step=1, full_denoise=False))
    x2 = sample_latents(s, request(s, empty_latent(s), end_step=2, full_denoise=False))
    clean = sample_latents(s, request(s, empty_latent(s), end_step=2))
    s.pipe.scheduler.set_timesteps(STEPS)  # Euler, set by the runs above
    sigma1, sigma2 = (float(v) for v in s.pipe.scheduler.sigmas[1:3])
    d = (x2 - x1) / (sigma2 - sigma1)
    assert torch.allclose(clean, x1 - sigma1 * d, atol=1e-3), (clean - (x1 - sigma1 * d)).abs().max()


def test_img2img_window_keeps_the_input_more_the_later_it_starts(tiny_session):
    s = tiny_session("sdxl")
    source = sample_latents(s, request(s, empty_latent(s)))
    late = sample_latents(s, request(s, source, start_step=3))
    early = sample_latents(s, request(s, source, start_step=1))
    assert (late - source).abs().mean() < (early - source).abs().mean()


def test_inpaint_mask_keeps_the_input_outside_the_mask(tiny_session):
    """A noise mask (1 = repaint): after the last step the kept cells are exactly the input latents, as
    diffusers' inpaint pipeline blends a 4-channel UNet's latents; the masked cells are redrawn."""
    s = tiny_session("sdxl")
    source = sample_latents(s, request(s, empty_latent(s)))
    mask = torch.zeros((1, 1) + source.shape[2:])
    mask[..., :, source.shape[3] // 2:] = 1.0  # repaint the right half
    out = sample_latents(s, request(s, source, mask=mask))
    half = source.shape[3] // 2
    assert torch.equal(out[..., :half], source[..., :half])
    assert (out[..., half:] - source[..., half:]).abs().mean() > 0.1
