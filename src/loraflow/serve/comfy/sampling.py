"""Plain functions behind the sampling and image nodes: the family's diffusers pipeline driven with
`latents=` / `output_type="latent"`, VAE decode/encode, resizing and saving."""
from __future__ import annotations

import json
import re

from loraflow.serve.comfy.values import Conditioning, ModelRef, activate


def sample(ctx, node_id: str, model: ModelRef, seed: int, steps: int, cfg: float, sampler_name: str,
           scheduler: str, positive: Conditioning, negative: Conditioning, latent: dict, strength: float = 1.0,
           node_type: str = "KSampler") -> dict:
    """Denoise `latent["samples"]` (B, C, h, w), C and the pixel size h * vae_scale_factor being the
    model's. strength 1: from pure noise (text-to-image, the noise from `seed` is added to the latent as
    ComfyUI does); strength < 1: img2img from that point. An empty latent of another shape (e.g.
    EmptyLatentImage's 4 channels for a model with 8) is replaced by the model's (`fit_latent`)."""
    import torch

    from loraflow.serve.comfy.nodes import NodeError, sampler_for
    from loraflow.serve.preview import Throttle, latent_to_jpeg

    if strength <= 0:
        return latent
    session = activate(ctx, model)
    session.set_scheduler(sampler_for(sampler_name, scheduler))
    pipe, family = session.pipe, session.family
    samples = fit_latent(pipe, latent["samples"], node_type)  # (B, C, h, w)
    batch, _, h, w = samples.shape
    scale = pipe.vae_scale_factor  # pixels per latent cell: 8 for SD/SDXL VAEs, 4 for the demo model's
    # 1. conditioning: one length for positive and negative (CLIP chunks), repeated over the batch
    pos, neg = _same_length(session, positive.embeds, negative.embeds)
    dtype, device = pipe.unet.dtype, pipe.unet.device
    kwargs = family.call_kwargs(_repeat(pos, batch, dtype), _repeat(neg, batch, dtype))
    if positive.controls:  # ControlNet: the family's ControlNet pipeline over the same modules
        from loraflow.serve.comfy.control import control_pipeline

        if strength < 1.0:
            raise NodeError("ControlNet with denoise < 1 (img2img) is not supported in workflows yet")
        pipe, control_kwargs = control_pipeline(ctx, session, positive.controls, h * scale, w * scale)
        kwargs.update(control_kwargs)
    # 2. progress, previews and cancel at every step
    throttle = Throttle()

    def on_step_end(p, i, t, callback_kwargs):
        ctx.progress(i + 1, total_steps, node=node_id)
        if throttle.ready():
            ctx.preview(latent_to_jpeg(callback_kwargs["latents"], family.name))
        return callback_kwargs

    generator = torch.Generator("cpu").manual_seed(seed % 2**63)
    common = dict(guidance_scale=cfg, output_type="latent", callback_on_step_end=on_step_end, **kwargs)
    with torch.no_grad():
        if strength >= 1.0:
            # 3a. text-to-image: ComfyUI's noisy start is latent + noise * sigma_max; the pipeline
            # multiplies what it is given by init_noise_sigma, so hand it noise + latent / sigma_max.
            total_steps = steps
            noise = torch.randn(samples.shape, generator=generator)
            pipe.scheduler.set_timesteps(steps)
            start = noise + samples / pipe.scheduler.init_noise_sigma
            out = pipe(latents=start.to(device, dtype), height=h * scale, width=w * scale, num_inference_steps=steps,
                       **common)
        else:
            # 3b. img2img from the given latents: the first (1 - strength) of the steps are skipped
            total_steps = max(1, int(steps * strength))
            i2i = _img2img_pipeline(ctx, session)
            i2i.scheduler = pipe.scheduler
            if not bool(samples.abs().sum()):
                raise NodeError("denoise < 1 needs an input latent (VAEEncode), not an empty one")
            if samples.shape[1] != 4:  # diffusers' img2img takes only 4-channel tensors as latents
                common["latents"] = _img2img_start(i2i, samples.to(device, dtype), strength, steps, generator)
            out = i2i(image=samples.to(device, dtype), strength=strength, num_inference_steps=steps,
                      generator=generator, **common)
    return {"samples": out.images.detach().float().cpu()}


def fit_latent(pipe, samples, node_type: str = "KSampler"):
    """`samples` (B, c, h, w) as the model's latent (B, C, H / s, W / s), C = the UNet's in_channels and
    s = pipe.vae_scale_factor. EmptyLatentImage does not know the model and always makes (B, 4, H/8, W/8)
    zeros; an all-zero latent with another channel count than the model's is taken to be such an empty
    one and replaced by zeros of the model's shape (ComfyUI `comfy/sample.py` fix_empty_latent_channels,
    plus the spatial size for VAEs that do not downscale by 8). Any other latent must already fit."""
    import torch

    from loraflow.serve.comfy.nodes import NodeError

    channels, scale = pipe.unet.config.in_channels, pipe.vae_scale_factor
    batch, got, h, w = samples.shape
    if got == channels:
        return samples
    if not samples.any():
        return torch.zeros((batch, channels, h * 8 // scale, w * 8 // scale), dtype=samples.dtype)
    raise NodeError(f"{node_type}: latent_image has {got} channels, this model expects {channels} "
                    "(a LATENT made with another model's VAE?)")


def _img2img_start(i2i, init, strength: float, steps: int, generator):
    """The noisy start latents the img2img pipeline makes itself in `prepare_latents` (the input noised to
    the first timestep kept by `strength`), for latents it would not recognise as latents (not 4 channels)."""
    from diffusers.utils.torch_utils import randn_tensor

    i2i.scheduler.set_timesteps(steps, device=init.device)
    timesteps, _ = i2i.get_timesteps(steps, strength, init.device)
    noise = randn_tensor(init.shape, generator=generator, device=init.device, dtype=init.dtype)
    return i2i.scheduler.add_noise(init, noise, timesteps[:1].repeat(init.shape[0]))


def _img2img_pipeline(ctx, session):
    """The family's img2img pipeline over the same components (no weights copied), kept per session."""
    cache = ctx.state.setdefault("img2img", {})
    key = id(session.pipe)
    if key not in cache:
        cls = session.family.pipeline_class("img2img")
        components = {k: v for k, v in session.pipe.components.items() if k in _init_params(cls)}
        cache.clear()
        cache[key] = cls(**components)
        cache[key].set_progress_bar_config(disable=True)
        # the image processor passes a tensor with the VAE's channel count through as latents (default 4)
        cache[key].image_processor.register_to_config(vae_latent_channels=session.pipe.vae.config.latent_channels)
    return cache[key]


def _init_params(cls) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _same_length(session, pos, neg):
    """Pad the shorter CLIP embedding with empty-prompt chunks (as A1111 / GenerationSession)."""
    import torch

    from loraflow.models.families import PromptEmbeds

    lp, ln = pos.embeds.shape[1], neg.embeds.shape[1]
    if lp == ln:
        return pos, neg
    empty = session.encode([""])[0].embeds  # (1, 77, D)
    pad = lambda e, n: PromptEmbeds(torch.cat([e.embeds] + [empty] * ((n - e.embeds.shape[1]) // empty.shape[1]), 1), e.pooled)
    return (pad(pos, ln), neg) if lp < ln else (pos, pad(neg, lp))


def _repeat(embeds, batch: int, dtype):
    from loraflow.models.families import PromptEmbeds

    return PromptEmbeds(embeds.embeds.repeat(batch, 1, 1).to(dtype),
                        None if embeds.pooled is None else embeds.pooled.repeat(batch, 1).to(dtype))


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
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        import torch

        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        return (latents - mean) * cfg.scaling_factor / std
    return (latents - (getattr(cfg, "shift_factor", None) or 0.0)) * cfg.scaling_factor


def _unscale(vae, latents):
    cfg = vae.config
    if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
        import torch

        mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1).to(latents)
        std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1).to(latents)
        return latents * std / cfg.scaling_factor + mean
    return latents / cfg.scaling_factor + (getattr(cfg, "shift_factor", None) or 0.0)


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

    from loraflow.atomic import atomic_save_image
    from loraflow.serve.paths import safe_join

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

