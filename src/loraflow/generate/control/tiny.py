"""Tiny ControlNets matching the tiny UNets of `models/tiny.py` (tests and quick starts).

`ControlNetModel.from_unet` copies the UNet's encoder half; its output convolutions start at
zero (ControlNet paper, section 3), which would make any tiny ControlNet a no-op, so they are
filled with small random values here. For Kolors the UNet's `text_proj` is copied as well.
"""
from __future__ import annotations

from pathlib import Path

from loraflow.atomic import apply_umask
from loraflow.models.tiny import build_tiny_components

COND_CHANNELS = (4, 8, 8, 16)  # conditioning embedding: 3 stride-2 convs = the VAE's 8x


def build_tiny_controlnet(unet, seed: int = 0, std: float = 0.3):
    import torch

    from loraflow.generate.control.model import ControlNet

    controlnet = ControlNet.from_unet(unet, conditioning_embedding_out_channels=COND_CHANNELS)
    if controlnet.encoder_hid_proj is not None:
        controlnet.encoder_hid_proj.load_state_dict(unet.encoder_hid_proj.state_dict())
    gen = torch.Generator().manual_seed(seed)
    zero_init = [controlnet.controlnet_cond_embedding.conv_out, controlnet.controlnet_mid_block,
                 *controlnet.controlnet_down_blocks]
    with torch.no_grad():
        for module in zero_init:
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
    return controlnet.eval()


def save_tiny_controlnet(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """A tiny ControlNet for `tiny:<family>` written as a diffusers folder (config.json + safetensors)."""
    unet = build_tiny_components(family)["unet"]
    build_tiny_controlnet(unet, seed).save_pretrained(out_dir, safe_serialization=True)
    return apply_umask(out_dir)
