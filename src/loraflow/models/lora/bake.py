"""Merge LoRAs into a single-file checkpoint (`loraflow lora merge --base model.safetensors`): the
A1111 / ComfyUI layout in, the same layout out, every other tensor copied as is.

Where a LoRA module lands in the checkpoint is the rule ComfyUI applies when it loads a LoRA
(`comfy/lora.py::model_lora_keys_unet/clip`) read backwards:

    unet.<diffusers module>     model.diffusion_model.<SGM/LDM path>.weight   (kohya_keys.unet_to_sgm)
    a text encoder, HF layout   <its prefix>text_model.<module>.weight
    OpenCLIP layout             <its prefix>transformer.resblocks.<i>.attn.in_proj_weight rows [0:d] q,
                                [d:2d] k, [2d:3d] v; attn.out_proj, mlp.c_fc (fc1), mlp.c_proj (fc2)

Each text encoder's prefix is the family's (`single_file_layout`); which layout it uses is read from
the checkpoint's keys.

The block layout (layers per level, which levels have attention) is read from the checkpoint's own
keys, so any SD1.5/SDXL-shaped UNet works, tiny test models included. Deltas are computed by the same
code that applies LoRAs at generation time (`lycoris.Adapter.patched`), in float32.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from loraflow.atomic import atomic_save_safetensors
from loraflow.errors import InputError
from loraflow.models.families import get_family
from loraflow.models.lora import kohya_keys
from loraflow.models.lora.tools import module_deltas
from loraflow.models.single_file import UNET, detect_checkpoint_family


def layout_from_checkpoint(keys) -> kohya_keys.SgmLayout:
    """Layers per block and attention levels of the UNet in a single-file checkpoint."""
    ops = sorted(int(m.group(1)) for k in keys if (m := re.match(rf"{re.escape(UNET)}input_blocks\.(\d+)\.0\.op\.", k)))
    if not ops:
        raise InputError("the base checkpoint has no UNet downsamplers (model.diffusion_model.input_blocks.*.0.op)")
    n = ops[0]  # slots per level: the layers, then the downsampler
    levels = len(ops) + 1

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in keys)

    down = tuple(has(f"{UNET}input_blocks.{1 + level * n}.1.proj_in") for level in range(levels))
    up = tuple(has(f"{UNET}output_blocks.{level * n}.1.proj_in") for level in range(levels))
    return kohya_keys.SgmLayout(layers_per_block=n - 1, down_has_attention=down, up_has_attention=up)


def checkpoint_target(target: str, keys: set[str], layout: kohya_keys.SgmLayout,
                      prefixes: dict[str, str]) -> tuple[str, int | None]:
    """`<component>.<module>` -> (checkpoint key, which third of a fused qkv weight (0 q, 1 k, 2 v) or None).

    `prefixes`: component -> key prefix in the checkpoint (the family's `single_file_layout`)."""
    component, _, module = target.partition(".")
    if component == "unet":
        try:
            return f"{UNET}{kohya_keys.unet_to_sgm(module, layout)}.weight", None
        except kohya_keys.UnmappedModuleError as e:
            raise InputError(str(e)) from None
    prefix = prefixes.get(component)
    if prefix is None:
        raise InputError(f"'{target}': this checkpoint has no {component}")
    if not module.startswith("text_model."):
        module = "text_model." + module
    if not any(k.startswith(f"{prefix}transformer.resblocks.") for k in keys):  # HF CLIP layout
        return f"{prefix}{module}.weight", None
    match = re.fullmatch(r"text_model\.encoder\.layers\.(\d+)\.(.+)", module)
    name = kohya_keys.OPENCLIP_PARTS.get(match.group(2)) if match else None
    if name is None:
        raise InputError(f"'{target}' has no place in the OpenCLIP text encoder of a single-file checkpoint")
    layer, part = match.groups()
    base = f"{prefix}transformer.resblocks.{layer}."
    if name == "attn":  # q, k or v: its rows of the fused projection
        return base + "attn.in_proj_weight", "qkv".index(part.removeprefix("self_attn.")[0])
    return f"{base}{name}.weight", None


def bake_loras(base: str | os.PathLike, loras: list[tuple[Any, float]], dst: str | os.PathLike) -> Path:
    """Write `base` with `[(LoraFile, weight), ...]` merged into its weights, as `dst` (.safetensors)."""
    import torch
    from safetensors import safe_open


    base = Path(base)
    if base.suffix.lower() != ".safetensors":
        raise InputError(f"{base}: merge writes into a .safetensors single-file checkpoint")
    family = detect_checkpoint_family(base)
    if family is None:
        raise InputError(f"{base}: not a single-file checkpoint of a family loraflow knows")
    prefixes = {c: prefix for c, (prefix, _) in get_family(family).single_file_layout.items()}
    with safe_open(str(base), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = dict(f.metadata() or {})
    keys = set(tensors)
    layout = layout_from_checkpoint(keys)
    patched: dict[str, Any] = {}
    for lora, weight in loras:
        for target, (adapter, _) in module_deltas(lora).items():
            key, third = checkpoint_target(target, keys, layout, prefixes)
            if key not in tensors:
                raise InputError(f"{lora.name}: '{target}' matches no weight of {base.name} (looked for {key})")
            full = patched.get(key)
            if full is None:
                full = patched[key] = tensors[key].float()
            if third is None:
                view = full
            else:
                d = full.shape[0] // 3
                view = full[third * d:(third + 1) * d]  # a view: writing it writes the fused weight
            try:
                view.copy_(adapter.patched(view, weight))
            except RuntimeError:
                raise InputError(f"{lora.name}: shape mismatch at '{target}': {base.name} has {tuple(view.shape)} "
                                 f"at {key}") from None
    with torch.no_grad():
        for key, value in patched.items():
            tensors[key] = value.to(tensors[key].dtype).contiguous()
    names = ", ".join(f"{lora.path.name if lora.path else 'LoRA'}:{w:g}" for lora, w in loras)
    metadata["loraflow_merged_loras"] = names
    return atomic_save_safetensors(tensors, dst, metadata)
