"""LoRAs trained with DiffSynth-Studio, rewritten as kohya files (`loraflow lora convert`).

DiffSynth-Studio 1.x (last 1.x commit afd101f3, v1.1.9; the seed tutorial's
`examples/train/kolors/train_kolors_lora.py`) injects peft LoRA into its own SDXL UNet
(`diffsynth/models/sdxl_unet.py::SDXLUNet`), whose blocks are one flat `blocks` list in forward
order, with PushBlock/PopBlock entries for the skip connections. Lightning's checkpoint then holds
only the trainable tensors (`trainers/text_to_image.py::on_save_checkpoint` clears it first):

    blocks.7.transformer_blocks.0.attn1.to_q.lora_A.default.weight   (r, in)
    blocks.7.transformer_blocks.0.attn1.to_out.lora_B.default.weight  (out, r)

Inside a block the names are diffusers' but for `to_out` (no `.0`), `act_fn.proj` (= `ff.net.0.proj`)
and `ff` (= `ff.net.2`); top-level `time_embedding.{0,2}`, `add_time_embedding.{0,2}` and
`text_intermediate_proj` stand for `time_embedding.linear_{1,2}`, `add_embedding.linear_{1,2}` and
`encoder_hid_proj` (`SDXLUNetStateDictConverter.from_diffusers`). Nothing in the file records alpha:
training used peft's `lora_alpha` (scale alpha / rank), while DiffSynth's loader multiplies
B @ A by its own `lora_alpha` argument (`models/lora.py::LoRAFromCivitai`, no division by rank).
The user states which with `lora_alpha` (as trained) or `lora_scale` (as DiffSynth loads it).

DiffSynth-Studio 2.x saves `.safetensors` with the model's diffusers names and peft's `.default`
(`diffusion/training_module.py::export_trainable_state_dict`); it trains with alpha = rank by default
and loads with scale 1 (`utils/lora/general.py::GeneralLoRALoader`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from loraflow.errors import InputError
from loraflow.models.families import FAMILIES
from loraflow.models.lora import formats
from loraflow.models.lora.kohya_keys import SDXL_LAYOUT, SgmLayout
from loraflow.models.lora.load import read_state_dict
from loraflow.models.lora.save import save_lora

# DiffSynth 1.x names inside its blocks -> diffusers (suffix replacements, longest first)
_INNER = ((".act_fn.proj", ".ff.net.0.proj"), (".to_out", ".to_out.0"), (".ff", ".ff.net.2"))
_TOP = {"time_embedding.0": "time_embedding.linear_1", "time_embedding.2": "time_embedding.linear_2",
        "add_time_embedding.0": "add_embedding.linear_1", "add_time_embedding.2": "add_embedding.linear_2",
        "text_intermediate_proj": "encoder_hid_proj", "conv_in": "conv_in", "conv_out": "conv_out"}


def block_prefixes(layout: SgmLayout = SDXL_LAYOUT) -> dict[int, str]:
    """DiffSynth 1.x `blocks` index -> diffusers module prefix, for the SDXL-class layout.

    The list is built the way `SDXLUNet.__init__` lays it out: per down level, (resnet, [attention],
    push) per layer and (downsampler, push) between levels; mid (resnet, attention, resnet); per up
    level, (pop, resnet, [attention]) per layer + 1 and an upsampler between levels.
    """
    blocks: list[str | None] = []  # None: a push/pop block (no weights)
    levels = len(layout.down_has_attention)
    for i, attention in enumerate(layout.down_has_attention):
        for j in range(layout.layers_per_block):
            blocks += [f"down_blocks.{i}.resnets.{j}"] + ([f"down_blocks.{i}.attentions.{j}"] if attention else [])
            blocks.append(None)
        if i < levels - 1:
            blocks += [f"down_blocks.{i}.downsamplers.0", None]
    blocks += ["mid_block.resnets.0", "mid_block.attentions.0", "mid_block.resnets.1"]
    for i, attention in enumerate(layout.up_has_attention):
        for j in range(layout.layers_per_block + 1):
            blocks += [None, f"up_blocks.{i}.resnets.{j}"] + ([f"up_blocks.{i}.attentions.{j}"] if attention else [])
        if i < levels - 1:
            blocks.append(f"up_blocks.{i}.upsamplers.0")
    return {n: prefix for n, prefix in enumerate(blocks) if prefix is not None}


def diffsynth_to_diffusers(module: str, prefixes: dict[int, str]) -> str:
    """`blocks.7.transformer_blocks.0.attn1.to_out` -> `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_out.0`."""
    if module in _TOP:
        return _TOP[module]
    parts = module.split(".")
    if parts[0] != "blocks" or len(parts) < 3 or not parts[1].isdigit() or int(parts[1]) not in prefixes:
        raise InputError(f"'{module}' is not a module of DiffSynth-Studio's SDXL UNet")
    rest = "." + ".".join(parts[2:])
    for old, new in _INNER:
        if rest.endswith(old):
            rest = rest[: -len(old)] + new
            break
    return prefixes[int(parts[1])] + rest


def diffsynth_version(state_dict: dict[str, Any]) -> int | None:
    """1 or 2 for DiffSynth-Studio LoRA tensors (peft's `.default` adapter name kept), else None."""
    keys = list(state_dict)
    if not keys or not all(".lora_A.default." in k or ".lora_B.default." in k for k in keys):
        return None
    return 1 if any(k.startswith("blocks.") for k in keys) else 2


def to_peft_state_dict(state_dict: dict[str, Any], version: int, layout: SgmLayout = SDXL_LAYOUT) -> dict[str, Any]:
    """DiffSynth keys -> peft keys with diffusers UNet names (`<module>.lora_A.weight`)."""
    prefixes = block_prefixes(layout)
    out = {}
    for key, value in state_dict.items():
        module, _, tail = key.partition(".lora_")
        name = diffsynth_to_diffusers(module, prefixes) if version == 1 else module
        out[f"{name}.lora_{tail.replace('.default.', '.')}"] = value
    return out


def convert_diffsynth(src: str | os.PathLike, dst: str | os.PathLike, *, family: str | None,
                      lora_alpha: float | None = None, lora_scale: float | None = None,
                      allow_pickle: bool = False) -> Path | None:
    """Write `src` (a DiffSynth-Studio LoRA) as a kohya file at `dst`; None if `src` is not one."""

    state_dict, _ = read_state_dict(src, allow_pickle=allow_pickle)
    version = diffsynth_version(state_dict)
    if version is None:
        return None
    families = [name for name, fam in FAMILIES.items() if fam.supported]
    if family not in families:
        raise InputError(f"{src}: a DiffSynth-Studio LoRA does not say which model it is for; "
                         f"pass --family ({', '.join(families)})")
    peft_sd = to_peft_state_dict(state_dict, version)
    ranks = formats.module_ranks({f"unet.{k}": v for k, v in peft_sd.items()})
    rank = formats.most_common(ranks.values())
    alpha, how = _alpha(version, rank, lora_alpha, lora_scale, src)
    dtype = next(iter(peft_sd.values())).dtype
    meta = {"loraflow_converted_from": f"DiffSynth-Studio {version}.x {Path(src).name}", "loraflow_alpha_source": how}
    if len(set(ranks.values())) > 1:
        raise InputError(f"{src}: modules have different ranks ({sorted(set(ranks.values()))}); "
                         "DiffSynth-Studio trains one rank")
    return save_lora(dst, peft_sd, family=family, rank=rank, alpha=alpha, dtype=dtype, metadata=meta)


def _alpha(version: int, rank: int, lora_alpha: float | None, lora_scale: float | None, src) -> tuple[float, str]:
    if lora_alpha is not None and lora_scale is not None:
        raise InputError("give --lora-alpha (as trained) or --lora-scale (as DiffSynth loads it), not both")
    if lora_alpha is not None:
        return float(lora_alpha), f"--lora-alpha {lora_alpha:g} (peft lora_alpha at training; scale alpha/rank)"
    if lora_scale is not None:
        return float(lora_scale) * rank, f"--lora-scale {lora_scale:g} (DiffSynth load-time lora_alpha; scale as is)"
    if version == 2:  # 2.x: `add_lora_to_model(lora_alpha=None)` means alpha = rank
        return float(rank), "DiffSynth-Studio 2.x default (alpha = rank, scale 1)"
    raise InputError(f"{src}: a DiffSynth-Studio 1.x checkpoint does not record alpha; pass --lora-alpha "
                     "(the training script's --lora_alpha, default 4) or --lora-scale (the lora_alpha "
                     "given to DiffSynth's loader)")
