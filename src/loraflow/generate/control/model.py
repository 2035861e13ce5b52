"""ControlNet weights: loading them (diffusers folder or one .safetensors file) and the model class.

`ControlNet` is diffusers' `ControlNetModel` plus two things:

1. Kolors' ControlNets (Kwai-Kolors/Kolors-ControlNet-Canny/Depth/Pose) are SDXL ControlNets with
   `encoder_hid_dim_type="text_proj"`: they project the 4096-d ChatGLM hidden states to the
   cross-attention width with their *own* `encoder_hid_proj` before the down blocks, as the Kolors
   UNet does with its own (`kolors/models/controlnet.py` in the Kolors repository). diffusers'
   ControlNetModel builds that layer but never calls it; here `forward` does.
2. At conditioning scale 0 — outside the `control_guidance_start/end` window, where diffusers'
   pipelines still call the ControlNet and multiply its output by 0 — the network is not run and
   zero residuals of the right shapes are returned, so the window saves the time it should (A1111
   skips the ControlNet there too). The output is the same as running it at scale 0.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import ControlNetModel

from loraflow.errors import ModelLoadError
from loraflow.models.hashing import legacy_model_hash

WEIGHT_NAME = "diffusion_pytorch_model.safetensors"
LDM_PREFIX = "control_model."  # original (A1111 / lllyasviel) ControlNet checkpoints


class ControlNet(ControlNetModel):
    """diffusers' ControlNetModel that applies a `text_proj` projection and skips scale-0 steps."""

    forward_calls = 0  # networks actually run (class default; counted per instance)

    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0,
                *args, guess_mode: bool = False, return_dict: bool = True, **kwargs):
        if not _is_tensor(conditioning_scale) and float(conditioning_scale) == 0.0:
            down, mid = self.zero_residuals(sample)
        else:
            self.forward_calls += 1
            if self.encoder_hid_proj is not None and self.config.encoder_hid_dim_type == "text_proj":
                encoder_hidden_states = self.encoder_hid_proj(encoder_hidden_states)  # (B, L, 4096) -> (B, L, D)
            out = super().forward(sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale,
                                  *args, guess_mode=guess_mode, return_dict=False, **kwargs)
            down, mid = out
        if not return_dict:
            return down, mid
        from diffusers.models.controlnets.controlnet import ControlNetOutput

        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)

    def zero_residuals(self, sample) -> tuple[list[Any], Any]:
        """Zeros shaped like this ControlNet's outputs for `sample` (B, C, h, w) — no network run.

        One residual after conv_in, one per resnet layer of each down block, one per downsampler
        (3x3 conv, stride 2, padding 1: h -> ceil(h / 2)), and the mid block's output.
        """
        import torch

        batch, _, h, w = sample.shape
        channels = self.config.block_out_channels
        shapes = [(channels[0], h, w)]
        for i, c in enumerate(channels):
            shapes += [(c, h, w)] * self.config.layers_per_block
            if i < len(channels) - 1:
                h, w = (h + 1) // 2, (w + 1) // 2
                shapes.append((c, h, w))
        zeros = [torch.zeros((batch, *s), dtype=sample.dtype, device=sample.device) for s in shapes]
        return zeros, torch.zeros((batch, channels[-1], h, w), dtype=sample.dtype, device=sample.device)


def _is_tensor(x) -> bool:
    import torch

    return isinstance(x, torch.Tensor)


def load_controlnet(path: str | Path, unet, dtype=None, device=None) -> ControlNet:
    """A ControlNet from a diffusers folder (config.json + weights), or a single .safetensors file.

    A single file may hold diffusers keys or original `control_model.*` keys (converted with
    diffusers' single-file converter). Its config is a `config.json` beside it when there is one,
    otherwise the base UNet's own layout (`ControlNetModel.from_unet`), which is what the
    full-size SD1.5 / SDXL / Kolors ControlNets use. Nothing is downloaded.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"ControlNet not found: {path} (a diffusers folder or a .safetensors file)")
    if path.is_dir():
        model = _load_folder(path)
    elif path.suffix.lower() == ".safetensors":
        model = _load_file(path, unet)
    else:
        raise ModelLoadError(f"ControlNet {path.name}: expected a diffusers folder or a .safetensors file "
                             "(pickle checkpoints are not loaded; convert them to safetensors)")
    model.eval().requires_grad_(False)
    if dtype is not None and model.dtype != dtype:
        model = model.to(dtype=dtype)
    return model.to(device) if device is not None else model


def _load_folder(path: Path) -> ControlNet:
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"ControlNet folder {path} has no config.json (expected a diffusers ControlNet folder)")
    if not any(path.glob("*.safetensors")):
        raise ModelLoadError(f"ControlNet folder {path} has no .safetensors weights "
                             "(.bin weights are not loaded: they are pickles)")
    try:
        return ControlNet.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"cannot load ControlNet {path}: {str(exc).splitlines()[0]}") from None


def _load_file(path: Path, unet) -> ControlNet:
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise ModelLoadError(f"cannot read ControlNet {path}: {exc}") from None
    if any(k.startswith(LDM_PREFIX) or k.startswith("input_blocks.") for k in state):
        from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

        state = convert_controlnet_checkpoint(state, {"layers_per_block": unet.config.layers_per_block})
    config_file = next((p for p in (path.with_suffix(".json"), path.parent / "config.json") if p.is_file()), None)
    if config_file is not None:
        model = ControlNet.from_config(json.loads(config_file.read_text(encoding="utf-8")))
    else:
        model = ControlNet.from_unet(unet, conditioning_embedding_out_channels=_cond_channels(state),
                                     load_weights_from_unet=False)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
        problem = f"{len(missing)} missing, {len(unexpected)} unexpected keys, e.g. {(missing or unexpected)[0]}" \
            if missing or unexpected else None
    except RuntimeError as exc:  # shape mismatches
        problem = str(exc).strip().splitlines()[-1].strip()
    if problem:
        raise ModelLoadError(f"ControlNet {path.name} does not fit this model's UNet layout ({problem}); "
                             "put its config.json beside it, or pass its folder")
    return model


def _cond_channels(state: dict) -> tuple[int, ...]:
    """The conditioning embedding's widths, read off the weights (conv_in, then each stride-2 conv)."""
    prefix = "controlnet_cond_embedding."
    if f"{prefix}conv_in.weight" not in state:
        return (16, 32, 96, 256)  # diffusers' default, that of every released ControlNet
    widths = [state[f"{prefix}conv_in.weight"].shape[0]]
    k = 1
    while f"{prefix}blocks.{k}.weight" in state:
        widths.append(state[f"{prefix}blocks.{k}.weight"].shape[0])
        k += 2
    return tuple(widths)


def controlnet_hash(path: str | Path) -> str:
    """A1111's 8-digit hash shown as `Model: name [hash]`: SHA-256 of 64 KiB at offset 1 MiB."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.safetensors"))
        path = next((f for f in files if f.name == WEIGHT_NAME), files[0] if files else path)
    return legacy_model_hash(path)


def controlnet_name(path: str | Path) -> str:
    path = Path(path)
    return path.name if path.is_dir() else path.stem
