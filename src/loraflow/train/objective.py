"""The denoising objective: noise a latent at a random timestep, predict noise (or v), weighted MSE.

* timesteps uniform over the family's training schedule (Kolors: 1100 steps),
* prediction type from the scheduler config: epsilon, or v-prediction (Salimans & Ho 2022, eq. 9),
* min-SNR-gamma weighting (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting",
  eq. 10; the v-prediction form divides by SNR+1, as kohya `custom_train_functions.py` does),
* noise offset (Guttenberg 2023): a per-channel constant added to the noise.
"""
from __future__ import annotations

from loraflow.errors import ConfigError


def snr(noise_scheduler, timesteps):
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep, (B,)."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas_cumprod / (1.0 - alphas_cumprod)


def sample_noise(latents, generator, noise_offset: float = 0.0):
    import torch

    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)
    return noise


def sample_timesteps(noise_scheduler, batch: int, generator):
    import torch

    return torch.randint(0, noise_scheduler.config.num_train_timesteps, (batch,), generator=generator)


def noisy_input_and_target(noise_scheduler, latents, noise, timesteps, prediction_type: str):
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ConfigError(f"unsupported prediction type '{prediction_type}'; use epsilon or v_prediction")
    return noisy, target


def diffusion_loss(pred, target, timesteps, noise_scheduler, prediction_type: str, min_snr_gamma: float | None,
                   weight=None, sample_weight=None):
    """Mean over the batch of per-sample MSE, optionally min-SNR-gamma weighted. Computed in fp32.
    `weight` (B, 1, h, w) in [0, 1] (masked loss): each sample's MSE is the weighted mean over its
    latent cells, so a masked-out cell contributes nothing and a sample's scale does not depend on
    how much of it is masked (an all-zero mask gives 0). `sample_weight` (B,) scales whole samples
    (regularization images' prior-loss weight)."""
    import torch
    import torch.nn.functional as F

    squared = F.mse_loss(pred.float(), target.float(), reduction="none")  # (B, C, h, w)
    if weight is None:
        per_sample = squared.mean(dim=(1, 2, 3))  # (B,)
    else:
        weight = weight.float().expand_as(squared)
        per_sample = (squared * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp_min(1e-8)
    if min_snr_gamma:
        s = snr(noise_scheduler, timesteps.to(pred.device))
        clipped = torch.clamp(s, max=min_snr_gamma)
        weight = clipped / (s + 1.0) if prediction_type == "v_prediction" else clipped / s
        per_sample = per_sample * weight
    if sample_weight is not None:
        per_sample = per_sample * sample_weight.to(per_sample.device, per_sample.dtype)
    return per_sample.mean()
