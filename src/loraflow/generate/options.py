"""Typed options of `loraflow generate` (CLI flags, config files and the HTTP API share them)."""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator

from loraflow.config import Options, opt
from loraflow.errors import ConfigError


class ModelOptions(Options):
    """Which base model to run, and where."""

    model: str | None = opt(None, "diffusers folder, .safetensors checkpoint, or tiny:sdxl|tiny:sd15|tiny:kolors")
    family: Literal["kolors", "sdxl", "sd15"] | None = opt(None, "force the model family instead of detecting it")
    vae: str | None = opt(None, "replacement VAE (folder or .safetensors), e.g. sdxl-vae-fp16-fix")
    device: str = opt("auto", "cpu, cuda, cuda:1, mps, or auto (CUDA when available)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = opt(
        "auto", "weights dtype; auto = float16 on CUDA, float32 on CPU"
    )
    allow_pickle: bool = opt(False, "allow loading .ckpt/.pt/.bin files (weights_only=True); off by default")


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


class GenerateConfig(ModelOptions, SamplingOptions):
    prompt: str = opt("", "what to draw; A1111 syntax: (word:1.2), (word), [word], <lora:name:0.8>")
    num_images: int = opt(1, "images to make", aliases=("num_images_per_prompt", "n"), ge=1, le=64)
    batch_size: int = opt(1, "images per pipeline call", ge=1, le=64)
    out: str = opt("outputs", "output folder for PNGs", aliases=("output", "output_dir"))
