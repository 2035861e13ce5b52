"""Cheap previews while a job runs: latents -> RGB by a fixed linear map (no VAE decode), as JPEG.

The 4x3 factors are the approximate latent-to-RGB projections ComfyUI uses for its "latent2rgb"
previews (`comfy/latent_formats.py`: SD15 and SDXL; Kolors shares the SDXL VAE). Latents with another
channel count (the demo model's 8-channel VAE, a 9-channel inpainting UNet input) have no such factors:
their first 3 channels (or their mean) are stretched to [0, 1] instead.
"""
from __future__ import annotations

import io
import time
from contextlib import contextmanager
from typing import Callable

_RGB_FACTORS = {
    "sd15": ([[0.3512, 0.2297, 0.3227], [0.3250, 0.4974, 0.2350], [-0.2829, 0.1762, 0.2721], [-0.2120, -0.2616, -0.7177]],
             [0.0, 0.0, 0.0]),
    "sdxl": ([[0.3651, 0.4232, 0.4341], [-0.2533, -0.0042, 0.1068], [0.1076, 0.1111, -0.0362], [-0.3165, -0.2492, -0.2188]],
             [0.1084, -0.0175, -0.0011]),
}
PREVIEW_INTERVAL = 0.5  # seconds between previews of one job
PREVIEW_SIZE = 256


def latent_to_jpeg(latents, family: str, size: int = PREVIEW_SIZE) -> bytes:
    """JPEG bytes of the first latent of a batch, (B, C, h, w) -> an image whose longer side is `size`."""
    from PIL import Image

    x = latents[0].detach().float().cpu()  # (C, h, w)
    rgb = _latent_rgb(x, family) if x.shape[0] == 4 else _channels_rgb(x)  # (h, w, 3) in [0, 1]
    image = Image.fromarray(rgb.clamp(0, 1).mul(255).byte().numpy())
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _latent_rgb(x, family: str):
    """(4, h, w) SD/SDXL latent -> (h, w, 3) by the family's latent2rgb factors."""
    import torch

    factors, bias = _RGB_FACTORS["sd15" if family == "sd15" else "sdxl"]
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
