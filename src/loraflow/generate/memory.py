"""Device-memory modes of generation (`offload`, `vae_tiling`), applied to a loaded pipeline.

`loraflow plan generate` plans the same modes (loraflow/generate/plan.py) and says what each
one's peak is; these functions are what a run does.
"""
from __future__ import annotations

from contextlib import contextmanager

# Tile edge in pixels. diffusers tiles from the VAE's sample_size (1024 for SDXL/Kolors), which
# never tiles a 1024 x 1024 image; 512-pixel tiles (64 latents, 1/8 overlap) cut the decode's
# activations by about 4 at that size.
VAE_TILE = 512


def enable_vae_tiling(vae) -> None:
    """Tiled decode in VAE_TILE tiles, and one image of a batch at a time."""
    vae.enable_tiling()
    vae.enable_slicing()
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_sample_min_size = VAE_TILE
    vae.tile_latent_min_size = VAE_TILE // factor


@contextmanager
def vae_tiled(vae):
    """`enable_vae_tiling` for the duration of the block, the VAE's own settings after (a training run's
    validation previews decode tiled; its latent cache, when the VAE encodes in the loop, must not)."""
    saved = {k: getattr(vae, k) for k in ("use_tiling", "use_slicing", "tile_sample_min_size", "tile_latent_min_size")}
    enable_vae_tiling(vae)
    try:
        yield vae
    finally:
        for key, value in saved.items():
            setattr(vae, key, value)


def load_device(offload: str, device: str) -> str:
    """Where to load the weights: on the CPU when they are offloaded, so they never all pass through
    the device."""
    return "cpu" if offload != "none" else device


def apply_offload(pipe, family, offload: str, device: str) -> None:
    """`pipe` was loaded on `load_device(offload, device)`. On a CPU run nothing is offloaded."""
    if offload == "none" or not str(device).startswith("cuda"):
        if offload != "none":
            pipe.to(device)
        return
    if offload == "encoders":  # encode on the CPU; the embeddings are moved by the pipeline
        for name in ("unet", "vae"):
            getattr(pipe, name).to(device)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)
