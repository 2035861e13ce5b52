"""Cheap previews while a job runs: latents -> RGB by a fixed linear map (no VAE decode), as JPEG.

The 4x3 factors are the approximate latent-to-RGB projections ComfyUI uses for its "latent2rgb"
previews (`comfy/latent_formats.py`: SD15 and SDXL; Kolors shares the SDXL VAE).
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
    """JPEG bytes of the first latent of a batch, (B, 4, h, w) -> (h*8 fits in `size`)."""
    import torch
    from PIL import Image

    factors, bias = _RGB_FACTORS["sd15" if family == "sd15" else "sdxl"]
    x = latents[0].detach().float().cpu()  # (4, h, w)
    rgb = torch.einsum("chw,cr->hwr", x, torch.tensor(factors)) + torch.tensor(bias)  # (h, w, 3)
    rgb = ((rgb + 1) / 2).clamp(0, 1).mul(255).byte().numpy()
    image = Image.fromarray(rgb)
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


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
