"""Write LoRA files: kohya format (default; loads in A1111, ComfyUI, diffusers) or diffusers format.

Training hands us peft state dicts (`peft.get_peft_model_state_dict(unet)`: keys such as
`down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight`). The alpha is written
into the file (kohya: an `.alpha` tensor per module; diffusers: `lora_adapter_metadata`), so a
loader can never pair the weights with a different alpha than the one they were trained with.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from loraflow.atomic import atomic_save_safetensors
from loraflow.errors import InputError
from loraflow.models.families import FAMILIES
from loraflow.models.lora import formats
from loraflow.models.lora.metadata import sshs_hashes, training_metadata

if TYPE_CHECKING:
    import torch


def save_lora(
    path: str | os.PathLike,
    unet_state: dict[str, "torch.Tensor"],
    text_encoder_states: dict[str, dict[str, "torch.Tensor"]] | None = None,
    *,
    family: str,
    rank: int,
    alpha: float,
    fmt: Literal["kohya", "diffusers"] = "kohya",
    dtype: "torch.dtype | None" = None,
    metadata: dict[str, Any] | None = None,
    output_name: str | None = None,
    resolution: int | tuple[int, int] | None = None,
    tag_frequency: dict[str, dict[str, int]] | None = None,
) -> Path:
    """Write one LoRA `.safetensors` file atomically and return its path.

    unet_state: peft state dict of the UNet (`get_peft_model_state_dict(unet)`).
    text_encoder_states: {"text_encoder": sd, "text_encoder_2": sd} for trained CLIP encoders.
    rank, alpha: the LoraConfig values (`lora_rank`, `lora_alpha`); alpha is stored per module.
    dtype: tensor dtype in the file (default float16; use float32 for exact comparisons).
    metadata: training parameters, written as text (`ss_*` keys or any other name).
    """
    import torch

    if family not in FAMILIES:
        raise InputError(f"unknown family '{family}'; choose one of: {', '.join(FAMILIES)}")
    if fmt not in ("kohya", "diffusers"):
        raise InputError(f"unknown LoRA format '{fmt}'; choose kohya or diffusers")
    dtype = torch.float16 if dtype is None else dtype
    text_encoder_states = {k: v for k, v in (text_encoder_states or {}).items() if v}
    trainable = FAMILIES[family].lora_text_encoders
    bad = [name for name in text_encoder_states if name not in trainable]
    if bad:
        known = ", ".join(trainable) or "none (its text encoder is not LoRA-trained)"
        raise InputError(f"{family} has no text encoder '{bad[0]}' to save a LoRA for; known: {known}")

    neutral, _ = formats.peft_to_neutral(unet_state, None, "unet")
    for component, state in text_encoder_states.items():
        neutral.update(formats.peft_to_neutral(state, None, component)[0])
    neutral = {k: v.detach().to("cpu", dtype).contiguous() for k, v in neutral.items()}
    ranks = formats.module_ranks(neutral)
    if not ranks:
        raise InputError("no LoRA weights to save: the state dicts hold no lora_A/lora_B tensors")
    if formats.most_common(ranks.values()) != rank:
        raise InputError(f"rank={rank} but the LoRA weights have rank {formats.most_common(ranks.values())}")
    # Every module gets the configured alpha; its own rank comes from the tensor shapes.
    alphas = {target: float(alpha) for target in ranks}

    path = Path(path)
    meta = training_metadata(
        family=family, rank=rank, alpha=alpha, output_name=output_name or path.stem, resolution=resolution,
        tag_frequency=tag_frequency, has_text_encoder=bool(text_encoder_states), extra=metadata,
    )
    if fmt == "kohya":
        tensors = formats.neutral_to_kohya(neutral, alphas, family)
    else:
        tensors, adapter_meta = formats.neutral_to_diffusers(neutral, alphas)
        meta["format"] = "pt"
        meta["lora_adapter_metadata"] = json.dumps(adapter_meta, indent=2, sort_keys=True)
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = sshs_hashes(tensors, meta)
    atomic_save_safetensors(tensors, path, meta)
    return path
