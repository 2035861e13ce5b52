"""What a job draws from besides the prompt: ControlNet maps, an init image, an inpainting mask.

`prepare_references(config, width, height)` loads and fits the files once per batch;
`References.call_kwargs(pipe, n)` turns them into the diffusers arguments of the task pipeline.
Mask convention as diffusers and A1111: white = repaint, black = keep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraflow.generate.control.preprocess import (
    fit_to_size, load_image, make_control_map, module_name,
)
from loraflow.generate.control.units import ControlUnit
from loraflow.generate.control.pipelines import accepts


@dataclass
class PreparedControl:
    unit: ControlUnit
    image: Any  # PIL RGB control map, output size
    module: str  # A1111 module name for the infotext


@dataclass
class References:
    controls: list[PreparedControl] = field(default_factory=list)
    init_image: Any = None  # PIL RGB, output size
    mask: Any = None  # PIL L, output size
    strength: float | None = None
    guess_mode: bool = False

    @property
    def task(self) -> str:
        return "inpaint" if self.mask is not None else "img2img" if self.init_image is not None else "text2img"

    def call_kwargs(self, pipe, n: int, height: int, width: int) -> dict:
        """diffusers arguments for `n` images; one init image / mask per image so each is encoded
        with that image's own generator (a batch equals its items run one by one)."""
        kwargs: dict[str, Any] = {}
        if self.task != "text2img":
            kwargs.update(image=[self.init_image] * n, strength=self.strength)
        if self.mask is not None:
            kwargs["mask_image"] = [self.mask] * n
        if self.controls:
            maps = [c.image for c in self.controls]
            many = len(maps) > 1
            kwargs["control_image" if self.task != "text2img" else "image"] = maps if many else maps[0]
            units = [c.unit for c in self.controls]
            kwargs.update(
                controlnet_conditioning_scale=[u.scale for u in units] if many else units[0].scale,
                control_guidance_start=[u.start for u in units] if many else units[0].start,
                control_guidance_end=[u.end for u in units] if many else units[0].end,
                guess_mode=self.guess_mode,
            )
        if accepts(pipe, "height"):  # SD/SDXL img2img take the size of the (fitted) init image
            kwargs.update(height=height, width=width)
        return kwargs


def prepare_references(config, width: int, height: int) -> References:
    """Load, fit to width x height and preprocess every reference of a GenerateConfig."""
    refs = References(guess_mode=config.guess_mode)
    for k, unit in enumerate(config.control):
        label = f"control {k} ({unit.type})"
        image = make_control_map(unit.type, unit.image, width, height, label,
                                 canny_thresholds=(config.canny_low_threshold, config.canny_high_threshold),
                                 annotator_dir=config.annotator_dir)
        refs.controls.append(PreparedControl(unit, image, module_name(unit.type, config.annotator_dir)))
    if config.init_image:
        refs.init_image = fit_to_size(load_image(config.init_image, "init_image"), width, height,
                                      f"init_image ({config.init_image})")
        refs.strength = config.strength
    if config.mask:
        refs.mask = fit_to_size(load_image(config.mask, "mask", mode="L"), width, height, f"mask ({config.mask})")
    return refs


def denoising_steps(steps: int, strength: float | None) -> int:
    """Steps an img2img/inpaint run actually takes (diffusers' `get_timesteps`)."""
    return steps if strength is None else min(int(steps * strength), steps)


def vae_round_trip(pipe, image, height: int, width: int):
    """The init image encoded and decoded by the VAE (latent mean, no noise): what denoising
    strength 0 gives, since no step runs. diffusers refuses a run with 0 steps."""
    import torch

    processor = pipe.image_processor
    vae = pipe.vae
    x = processor.preprocess(image, height=height, width=width).to(device=vae.device, dtype=vae.dtype)
    with torch.no_grad():
        latents = vae.encode(x).latent_dist.mode()
        decoded = vae.decode(latents).sample
    return processor.postprocess(decoded, output_type="pil")[0]


def paste_unmasked(generated, original, mask, blur: int):
    """A1111's overlay after inpainting: keep the original where the mask is black, with the mask
    edge blurred by `blur` pixels (A1111 "Mask blur"), so unmasked pixels are not VAE-degraded."""
    from PIL import Image, ImageFilter

    soft = mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask
    return Image.composite(generated, original, soft)
