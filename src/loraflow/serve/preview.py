"""Cheap previews while a job runs: latents -> RGB by a fixed linear map (no VAE decode), as JPEG.

The 4x3 factors are the approximate latent-to-RGB projections ComfyUI uses for its "latent2rgb"
previews (`comfy/latent_formats.py`), held by each family (`latent_rgb_factors`). Latents with another
channel count (the demo model's 8-channel VAE, a 9-channel inpainting UNet input), or of a family
without factors, have their first 3 channels (or their mean) stretched to [0, 1] instead.
"""
from __future__ import annotations

import io
import time
from contextlib import contextmanager
from typing import Callable

from loraflow.models.families import get_family

PREVIEW_INTERVAL = 0.5  # seconds between previews of one job
PREVIEW_SIZE = 256


def latent_to_jpeg(latents, family: str, size: int = PREVIEW_SIZE) -> bytes:
    """JPEG bytes of the first latent of a batch, (B, C, h, w) -> an image whose longer side is `size`."""
    from PIL import Image

    x = latents[0].detach().float().cpu()  # (C, h, w)
    fam = get_family(family)
    factors = fam.latent_rgb_factors
    fits = factors is not None and x.shape[0] == len(factors)
    rgb = _latent_rgb(x, factors, fam.latent_rgb_bias) if fits else _channels_rgb(x)  # (h, w, 3) in [0, 1]
    return image_to_jpeg(Image.fromarray(rgb.clamp(0, 1).mul(255).byte().numpy()), size)


def image_to_jpeg(image, size: int = PREVIEW_SIZE) -> bytes:
    """JPEG bytes of a finished PIL image, its longer side `size` (the last preview of a job)."""
    from PIL import Image

    image = image.convert("RGB")
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _latent_rgb(x, factors, bias):
    """(C, h, w) latent -> (h, w, 3) by the family's latent2rgb factors (C, 3) and bias (3,)."""
    import torch

    rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors)) + torch.tensor(bias)  # (h, w, 3) in ~[-1, 1]
    return (rgb + 1) / 2


def _channels_rgb(x):
    """(C, h, w) latent of any other channel count -> (h, w, 3): channels 0-2 (or the mean of fewer,
    as grey), each stretched from its min..max to 0..1. No colours are right, but shapes show."""
    rgb = x[:3] if x.shape[0] >= 3 else x.mean(0, keepdim=True).expand(3, -1, -1)  # (3, h, w)
    lo, hi = rgb.amin((1, 2), keepdim=True), rgb.amax((1, 2), keepdim=True)
    return ((rgb - lo) / (hi - lo).clamp_min(1e-6)).permute(1, 2, 0).contiguous()


class Throttle:
    def __init__(self, interval: float = PREVIEW_INTERVAL):
        self.interval = interval
        self._last = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            return True
        return False


@contextmanager
def unet_previews(pipe, family: str, send: Callable[[bytes], None]):
    """Preview the UNet's input latents while a pipeline runs (a forward pre-hook on the UNet, so
    `GenerationSession` needs no preview hook of its own). The input is the scheduler-scaled noisy
    latent, which sharpens into the image over the steps."""
    throttle = Throttle()

    def hook(module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        if sample is not None and throttle.ready():
            send(latent_to_jpeg(sample, family))

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
