"""Complete tiny pipelines of each family, built in-process with fixed seeds; nothing is downloaded.

They keep the real architecture's *layout* (SDXL's three UNet levels with two layers each, so
kohya/SGM LoRA key names are the real ones; Kolors' `text_proj` ChatGLM projection; the VAE's
8x downsampling) with a few channels, so every code path (loading, LoRA, training, ControlNet)
runs on a CPU in well under a second per image at 64x64. What differs by family (UNet layout,
text encoders, VAE scaling) is the family's `tiny_unet` / `tiny_text_components` / `vae_*`.

    pipe = build_tiny_pipeline("kolors")          # a diffusers KolorsPipeline
    save_tiny_model("sdxl", "/tmp/tiny-sdxl")     # a diffusers folder (model_index.json ...)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from loraflow.atomic import apply_umask
from loraflow.models.families import get_family

# UNet2DConditionModel arguments every tiny UNet shares; the family's `tiny_unet` adds the layout.
UNET_COMMON = dict(
    sample_size=8,  # 64 px / VAE factor 8
    in_channels=4,
    out_channels=4,
    norm_num_groups=8,
)


def _vae(family):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),  # four levels: 8x downsampling like the real VAEs
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=family.vae_scaling_factor,
        force_upcast=family.vae_force_upcast,
    )


def build_tiny_components(family: str, seed: int = 0, workdir: str | Path | None = None) -> dict:
    """All components of a tiny pipeline of `family`, deterministic for a given seed."""
    import torch
    from diffusers import UNet2DConditionModel

    fam = get_family(family)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"loraflow-tiny-{fam.name}-"))
    torch.manual_seed(seed)
    components: dict = {"unet": UNet2DConditionModel(**UNET_COMMON, **fam.tiny_unet)}
    torch.manual_seed(seed + 1)
    components["vae"] = _vae(fam)
    components["scheduler"] = fam.default_scheduler()
    components.update(fam.tiny_text_components(seed + 2, workdir))
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
    return {**components, **fam.pipeline_extras}


def build_tiny_pipeline(family: str, seed: int = 0, workdir: str | Path | None = None):
    """A diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `KolorsPipeline`)."""
    return get_family(family).pipeline_class()(**build_tiny_components(family, seed, workdir))


def save_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny model as a diffusers folder (`model_index.json`, safetensors weights)."""
    import shutil

    out_dir = Path(out_dir)
    pipe = build_tiny_pipeline(family, seed, workdir=out_dir / ".build")
    pipe.save_pretrained(out_dir, safe_serialization=True)
    shutil.rmtree(out_dir / ".build", ignore_errors=True)
    return apply_umask(out_dir)
