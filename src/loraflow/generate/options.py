"""Typed options of `loraflow generate` (CLI flags, config files and the HTTP API share them)."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from loraflow.config import Options, opt, parsed_before
from loraflow.errors import ConfigError
from loraflow.generate.control.units import ControlUnit, parse_units
from loraflow.generate.ip_references import MAX_REFERENCES, Reference, parse_references
from loraflow.generate.regions import MAX_REGIONS, RegionPrompt, parse_regions
from loraflow.models.families import TINY_MODELS, FamilyName


class ModelOptions(Options):
    """Which base model to run, and where."""

    model: str | None = opt(None, f"diffusers folder, .safetensors checkpoint, or {'|'.join(TINY_MODELS)}")
    family: FamilyName | None = opt(None, "force the model family instead of detecting it")
    vae: str | None = opt(None, "replacement VAE (folder or .safetensors), e.g. sdxl-vae-fp16-fix")
    device: str = opt("auto", "cpu, cuda, cuda:1, mps, or auto (CUDA when available)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = opt(
        "auto", "weights dtype; auto = float16 on CUDA, float32 on CPU"
    )
    allow_pickle: bool = opt(False, "allow loading .ckpt/.pt/.bin files (weights_only=True); off by default")
    offload: Literal["none", "encoders", "model", "sequential"] = opt(
        "none", "device memory: encoders (text encoders stay on the CPU) | model (one component on the GPU at a "
                "time) | sequential (one layer at a time; slowest); `loraflow plan generate` shows each one's peak")
    vae_tiling: bool = opt(False, "decode the VAE in tiles and one image at a time (less memory for large images)")


class SamplingOptions(Options):
    """How to sample; None means the family's default (Kolors: guidance 5, 50 steps, 1024x1024)."""

    negative_prompt: str = opt("", "what to steer away from; A1111 weights like (text:1.2) work")
    guidance_scale: float | None = opt(None, "classifier-free guidance scale", aliases=("cfg_scale", "cfg"))
    num_inference_steps: int | None = opt(None, "denoising steps", aliases=("steps",), ge=1, le=1000)
    height: int | None = opt(None, "image height in pixels (multiple of 8)", ge=64, le=4096)
    width: int | None = opt(None, "image width in pixels (multiple of 8)", ge=64, le=4096)
    seed: int | None = opt(None, "random seed; image i of a batch uses seed+i; none = random", ge=0, lt=2**32)
    scheduler: str | None = opt(None, "sampler: Euler, Euler a, DPM++ 2M, DPM++ 2M Karras, DDIM, UniPC, ...",
                                aliases=("sampler",))
    lora: list[str] = opt([], "LoRA file[:weight], repeatable; also <lora:name:weight> in the prompt")
    lora_dir: list[str] = opt([], "folders searched for <lora:name> tags and bare LoRA names")

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, v):
        if v is not None and v % 8:
            raise ValueError(f"must be a multiple of 8, got {v}")
        return v

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v):
        if v is not None:
            from loraflow.generate.schedulers import canonical_sampler

            try:
                return canonical_sampler(v)
            except ConfigError as e:
                raise ValueError(str(e)) from None
        return v


class ReferenceOptions(Options):
    """Reference images: ControlNet units, an img2img init image, an inpainting mask."""

    control: list[ControlUnit] = opt([], "ControlNet unit TYPE:IMAGE[:SCALE[:START:END]], repeatable; TYPE: "
                                         "canny, lineart, depth, pose, seg, tile, color, raw")
    controlnet: list[str] = opt([], "ControlNet weights (diffusers folder or .safetensors) per --control, same order")
    guess_mode: bool = opt(False, "ControlNet guess mode: the control map alone steers (A1111 'ControlNet is more important')")
    canny_low_threshold: int = opt(100, "canny preprocessor: low threshold", ge=0, le=255)
    canny_high_threshold: int = opt(200, "canny preprocessor: high threshold", ge=0, le=255)
    annotator_dir: str | None = opt(None, "local controlnet_aux annotator weights: depth/pose images are then "
                                          "photos to annotate (never downloaded); else they are ready-made maps")
    init_image: str | None = opt(None, "img2img: the image to start from", aliases=("image",))
    strength: float = opt(0.75, "img2img/inpaint: how much to change the init image (0 = keep it, 1 = redraw)",
                          aliases=("denoising_strength",), ge=0.0, le=1.0)
    mask: str | None = opt(None, "inpainting mask (white = repaint, black = keep); needs --init-image",
                           aliases=("mask_image",))
    mask_blur: int = opt(4, "inpainting: blur of the mask edge when the kept pixels are pasted back", ge=0, le=64)
    ip_adapter: str | None = opt(None, "IP-Adapter for --reference: a folder laid out as its hub repository (the "
                                       "model family's) or the adapter file; its image encoder is found beside it")
    reference: list[Reference] = opt([], "reference image IMAGE[:SCALE] steering the picture through the "
                                         "IP-Adapter, repeatable; in files also {image, scale, mask}",
                                   aliases=("references",), max_length=MAX_REFERENCES)

    _parse_references = parsed_before("reference", parse_references)

    _parse_units = parsed_before("control", parse_units)  # copies: `controlnet` paths are filled into them below

    @model_validator(mode="after")
    def _references_fit(self):
        if len(self.controlnet) > len(self.control):
            raise ValueError(f"{len(self.controlnet)} --controlnet for {len(self.control)} --control; give one per control")
        for unit, path in zip(self.control, self.controlnet):
            if unit.model is None:
                unit.model = path
        if self.mask and not self.init_image:
            raise ValueError("mask needs an init_image to repaint")
        return self


class GenerateConfig(ReferenceOptions, ModelOptions, SamplingOptions):  # flags: sampling, model, references
    prompt: str = opt("", "what to draw; A1111 syntax: (word:1.2), (word), [word], <lora:name:0.8>")
    num_images: int = opt(1, "images to make", aliases=("num_images_per_prompt", "n"), ge=1, le=64)
    batch_size: int = opt(1, "images per pipeline call", ge=1, le=64)
    out: str = opt("outputs", "output folder for PNGs", aliases=("output", "output_dir"))
    regions: list[RegionPrompt] = opt(
        [], "regional prompt REGION:PROMPT, repeatable; REGION: left, right, top, bottom, full or a mask image "
            "(white = the region). Each prompt draws only in its region; --prompt where none covers",
        aliases=("region",), max_length=MAX_REGIONS)

    _parse_regions = parsed_before("regions", parse_regions)

    def require_prompt(self) -> "GenerateConfig":
        """The config itself, once it is known to have a prompt to draw."""
        if not self.prompt:
            raise ConfigError("no prompt: pass --prompt TEXT")
        return self
