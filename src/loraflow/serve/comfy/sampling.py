"""Plain functions behind the sampling and image nodes: node inputs -> the one denoising engine
(`loraflow.generate.engine`), VAE decode/encode, resizing and saving."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from loraflow.atomic import atomic_save_image
from loraflow.errors import ConfigError
from loraflow.generate.engine import ControlInput, LatentSampling, sample_latents
from loraflow.generate.ip_references import MAX_REFERENCES, PreparedReferences, Reference
from loraflow.generate.schedulers import canonical_sampler
from loraflow.serve.comfy.regions import regional_inputs
from loraflow.serve.comfy.values import Latent, ModelRef, NodeError, activate
from loraflow.serve.paths import safe_join
from loraflow.serve.preview import Throttle, latent_to_jpeg

# KSampler names (ComfyUI `comfy/samplers.py`) -> our sampler table (generate/schedulers.py)
SAMPLER_NAMES = ("euler", "euler_ancestral", "heun", "lms", "dpmpp_2m", "dpmpp_2m_sde", "ddim", "uni_pc")
SCHEDULER_NAMES = ("normal", "karras")
_KARRAS_OK = ("dpmpp_2m", "dpmpp_2m_sde")


@dataclass(frozen=True)
class SamplerInputs:
    """The inputs KSampler and KSamplerAdvanced share."""

    model: ModelRef
    seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: Any  # CONDITIONING: a Conditioning, or a CombinedConditioning (base and regions)
    negative: Any
    latent: Latent


def sample(ctx, node_id: str, node_type: str, s: SamplerInputs, start_step: int = 0, end_step: int | None = None,
           add_noise: bool = True, full_denoise: bool = True) -> Latent:
    """LATENT `s.latent` denoised over steps [start_step, end_step) of an `s.steps`-step schedule, by
    the one engine (`loraflow.generate.engine.sample_latents`). From step 0 with noise this is
    text-to-image; a later start is img2img from that step. The latent's channels and pixel size
    h * vae_scale_factor are the model's (an empty one of another shape is refitted, `fit_latent`)."""
    session = activate(ctx, s.model)
    pipe = session.pipe
    samples = fit_latent(pipe, s.latent.samples, node_type)  # (B, C, h, w)
    mask = latent_mask(s.latent.noise_mask, samples.shape)  # (B, 1, h, w) or None
    height, width = samples.shape[2] * pipe.vae_scale_factor, samples.shape[3] * pipe.vae_scale_factor
    cond = regional_inputs(session, node_type, s.positive, s.negative, height, width)  # masked ones: regions
    controls = tuple(ControlInput(h.controlnet.path, hint_image(h.image, width, height), h.strength,
                                  h.start_percent, h.end_percent) for h in cond.controls)
    references = ip_references(s.model.references, width, height)
    throttle = Throttle()

    def on_step(done: int, total: int, latents) -> None:  # progress, previews and cancel at every step
        ctx.progress(done, total, node=node_id)
        if throttle.ready():
            ctx.preview(latent_to_jpeg(latents, session.family.name))

    out = sample_latents(session, LatentSampling(
        samples, cond.positive, cond.negative, s.seed, s.steps, s.cfg,
        sampler=sampler_for(s.sampler_name, s.scheduler), start_step=start_step, end_step=end_step,
        full_denoise=full_denoise, add_noise=add_noise, mask=mask, controls=controls, references=references,
        on_step=on_step, regions=cond.regions))
    return Latent(out, s.latent.noise_mask)


def ip_references(uses, width: int, height: int) -> PreparedReferences | None:
    """The IPAdapter nodes' references -> what the session attaches: each image of each node's IMAGE
    batch is a reference with the node's weight, its attn_mask (1 = acts) resized to the output size."""
    if not uses:
        return None
    adapters = {(u.adapter.path, u.clip_vision.path if u.clip_vision else None) for u in uses}
    if len(adapters) > 1:
        raise NodeError(f"one IP-Adapter (and image encoder) per model at a time here; got {len(adapters)}")
    refs, images, masks = [], [], []
    for use in uses:
        pics = images_to_pil(use.image)
        mask = None if use.attn_mask is None else mask_to_pil(use.attn_mask, width, height)
        for k, pic in enumerate(pics):
            refs.append(Reference(image=f"{use.label}.{k}", scale=use.weight, mask=use.label if mask is not None else None))
            images.append(pic)
            masks.append(mask)
    if len(refs) > MAX_REFERENCES:
        raise NodeError(f"{len(refs)} IP-Adapter reference images reach this sampler; at most {MAX_REFERENCES}")
    adapter, encoder = adapters.pop()
    return PreparedReferences(adapter, tuple(refs), tuple(images), tuple(masks), image_encoder=encoder)


def images_to_pil(images) -> list:
    """IMAGE (B, H, W, C) in [0, 1] -> B RGB PIL images."""
    import numpy as np
    from PIL import Image

    arr = (images.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a[..., :3]) for a in arr]


def mask_to_pil(mask, width: int, height: int):
    """MASK (B or 1, H, W) or (H, W) in [0, 1] -> the first mask as L at width x height (bilinear)."""
    import numpy as np
    from PIL import Image

    m = mask.reshape(-1, mask.shape[-2], mask.shape[-1])[0].detach().float().clamp(0, 1).cpu().numpy()
    return Image.fromarray((m * 255).round().astype(np.uint8)).resize((width, height), Image.BILINEAR)


def sampler_for(sampler_name: str, scheduler: str) -> str:
    """ComfyUI's sampler + scheduler pair -> a name `generate/schedulers.py` knows."""
    if scheduler == "karras" and sampler_name not in _KARRAS_OK:
        raise ConfigError(f"scheduler 'karras' works with {', '.join(_KARRAS_OK)} here, not '{sampler_name}'")
    return canonical_sampler(sampler_name + ("_karras" if scheduler == "karras" else ""))


def latent_mask(mask, shape):
    """A LATENT's noise_mask (B, 1, H, W) in pixels -> (B, 1, h, w) at the latent's size, bilinear, the
    batch repeated to B (ComfyUI `comfy/sampler_helpers.py` prepare_mask). 1 = redraw, 0 = keep."""
    if mask is None:
        return None
    import torch.nn.functional as F

    batch = shape[0]
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=tuple(shape[2:]), mode="bilinear", align_corners=False).clamp(0, 1)
    return m.repeat(-(-batch // m.shape[0]), 1, 1, 1)[:batch]


def inpaint_latent(vae, pixels, mask, grow: int, scale: int = 8) -> Latent:
    """ComfyUI's VAEEncodeForInpaint: pixels under the mask are set to grey before encoding (the VAE
    does not see what will be redrawn); the mask, grown by `grow` pixels, becomes the noise mask.
    pixels (B, H, W, C) in [0, 1], mask (B, H, W) or (H, W): 1 = redraw."""
    import math

    import torch
    import torch.nn.functional as F

    height, width = pixels.shape[1], pixels.shape[2]
    m = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).float()
    m = F.interpolate(m, size=(height, width), mode="bilinear", align_corners=False).round()  # (B, 1, H, W)
    grey = (pixels[..., :3] - 0.5) * (1 - m).permute(0, 2, 3, 1) + 0.5
    latents = vae_encode(vae, grey, scale)
    if grow > 0:  # dilate: a pixel is redrawn when any pixel of the grow x grow box around it is
        kernel = torch.ones((1, 1, grow, grow))
        m = F.conv2d(m, kernel, padding=math.ceil((grow - 1) / 2)).clamp(0, 1)[..., :height, :width]
    multiple = math.lcm(8, scale)  # vae_encode's crop
    return Latent(latents, m[..., :height // multiple * multiple, :width // multiple * multiple])


def hint_image(image, width: int, height: int):
    """IMAGE (B, H, W, C) -> the first image as PIL RGB at the output size (a ControlNet's hint)."""
    import numpy as np
    from PIL import Image

    array = (image[0].float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
    return Image.fromarray(array[..., :3]).convert("RGB").resize((width, height), Image.BICUBIC)


def fit_latent(pipe, samples, node_type: str = "KSampler"):
    """`samples` (B, c, h, w) as the model's latent (B, C, H / s, W / s), C = the UNet's in_channels and
    s = pipe.vae_scale_factor. EmptyLatentImage does not know the model and always makes (B, 4, H/8, W/8)
    zeros; an all-zero latent with another channel count than the model's is taken to be such an empty
    one and replaced by zeros of the model's shape (ComfyUI `comfy/sample.py` fix_empty_latent_channels,
    plus the spatial size for VAEs that do not downscale by 8). Any other latent must already fit."""
    import torch

    channels, scale = pipe.unet.config.in_channels, pipe.vae_scale_factor
    batch, got, h, w = samples.shape
    if got == channels:
        return samples
    if not samples.any():
        return torch.zeros((batch, channels, h * 8 // scale, w * 8 // scale), dtype=samples.dtype)
    raise NodeError(f"{node_type}: latent_image has {got} channels, this model expects {channels} "
                    "(a LATENT made with another model's VAE?)")


def vae_decode(vae, samples):
    """(B, C, h, w) scaled latents -> IMAGE (B, s*h, s*w, 3) in [0, 1], s the VAE's scale factor."""
    import torch

    latents = samples.to(vae.device, torch.float32 if vae.config.force_upcast else vae.dtype)
    latents = _unscale(vae, latents)
    with torch.no_grad(), _upcast(vae):
        pixels = vae.decode(latents.to(vae.dtype)).sample  # (B, 3, H, W) in [-1, 1]
    return (pixels.float() / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).cpu()


def vae_encode(vae, pixels, scale: int = 8):
    """IMAGE (B, H, W, 3) -> scaled latents (B, C, H/s, W/s), s = `scale` (the pipeline's
    vae_scale_factor); sides are cropped to multiples of s and of 8 (diffusers' pipelines check H % 8)."""
    import math

    import torch

    multiple = math.lcm(8, scale)
    h, w = pixels.shape[1] // multiple * multiple, pixels.shape[2] // multiple * multiple
    x = pixels[:, :h, :w, :3].permute(0, 3, 1, 2) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    with torch.no_grad(), _upcast(vae):
        latents = vae.encode(x.to(vae.device, vae.dtype)).latent_dist.mode()
    return _scale(vae, latents.float()).cpu()


def _scale(vae, latents):
    shift, std, factor = _latent_norm(vae, latents)
    return (latents - shift) * factor / std


def _unscale(vae, latents):
    shift, std, factor = _latent_norm(vae, latents)
    return latents * std / factor + shift


def _latent_norm(vae, latents) -> tuple:
    """(shift, std, scaling_factor) with model latents = (VAE latents - shift) * scaling_factor / std:
    per-channel `latents_mean` / `latents_std` where the VAE config has them, else its `shift_factor`
    and a std of 1."""
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        import torch

        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        return mean, std, cfg.scaling_factor
    return (getattr(cfg, "shift_factor", None) or 0.0), 1.0, cfg.scaling_factor


class _upcast:
    """fp16 SDXL VAEs overflow; run them in float32 for the call (diffusers' `force_upcast`)."""

    def __init__(self, vae):
        import torch

        self.vae = vae
        self.dtype = vae.dtype
        self.active = vae.dtype == torch.float16 and vae.config.force_upcast

    def __enter__(self):
        import torch

        if self.active:
            self.vae.to(torch.float32)

    def __exit__(self, *exc):
        if self.active:
            self.vae.to(self.dtype)


def scale_images(image, method: str, width: int, height: int, crop: str):
    """IMAGE (B, H, W, C) -> (B, height, width, C); 0 for one side keeps the aspect ratio."""
    import torch.nn.functional as F

    b, h, w, c = image.shape
    if width == 0 and height == 0:
        return image
    width = width or max(1, round(w * height / h))
    height = height or max(1, round(h * width / w))
    x = image.permute(0, 3, 1, 2)
    if crop == "center":
        src, dst = w / h, width / height
        if src > dst:
            cw = round(h * dst)
            x = x[:, :, :, (w - cw) // 2:(w - cw) // 2 + cw]
        elif src < dst:
            ch = round(w / dst)
            x = x[:, :, (h - ch) // 2:(h - ch) // 2 + ch, :]
    mode = {"nearest-exact": "nearest-exact", "bilinear": "bilinear", "area": "area", "bicubic": "bicubic",
            "lanczos": "bicubic"}[method]  # lanczos: bicubic (torch has no lanczos)
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    return F.interpolate(x, size=(height, width), mode=mode, **kwargs).clamp(0, 1).permute(0, 2, 3, 1)


def save_images(ctx, images, prefix: str, prompt: dict | None, extra_pnginfo: dict | None) -> list[dict]:
    """PNG files `PREFIX_00001_.png` (ComfyUI's naming) under outputs_dir, with the prompt embedded."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    prefix = prefix.strip() or "ComfyUI"
    target = safe_join(ctx.paths.outputs, prefix, "output")  # refuses ../ and absolute prefixes
    folder, stem = target.parent, target.name
    folder.mkdir(parents=True, exist_ok=True)
    subfolder = folder.relative_to(ctx.paths.outputs.resolve()).as_posix()
    subfolder = "" if subfolder == "." else subfolder
    pattern = re.compile(rf"^{re.escape(stem)}_(\d+)_\.png$")
    counter = max([int(m.group(1)) for p in folder.iterdir() if (m := pattern.match(p.name))], default=0) + 1
    info = PngInfo()
    if prompt is not None:
        info.add_text("prompt", json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(str(key), json.dumps(value))
    saved = []
    for i, image in enumerate(images):
        array = (image.float().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        name = f"{stem}_{counter + i:05}_.png"
        atomic_save_image(Image.fromarray(array), folder / name, pnginfo=info, compress_level=4)
        saved.append({"filename": name, "subfolder": subfolder, "type": "output"})
    return saved

