"""Training other adapter types through peft (LoRA, LoCon, LoHa, LoKr, DoRA) and writing them in the
kohya / LyCORIS key layout ComfyUI and A1111 load (`lycoris.py` reads the same layout back).

    lora   peft LoraConfig                      lora_down / lora_up / alpha
    locon  lora on the ResNet convs as well     (same keys; conv weights 4-D)
    dora   LoraConfig(use_dora=True)            + dora_scale (out, 1[, 1, 1]) = peft's lora_magnitude_vector
    loha   LoHaConfig                           hada_w1_a/b, hada_w2_a/b (+ hada_t1/t2 Tucker) / alpha
    lokr   LoKrConfig                           lokr_w1[_a/_b], lokr_w2[_a/_b], lokr_t2 / alpha

peft's tensors are LyCORIS' own (same names and shapes; peft `tuners/loha`, `tuners/lokr` follow
LyCORIS), and so is the scale alpha / r, with one exception: peft scales a LoKr module by alpha / r
even when neither factor is decomposed, where ComfyUI and LyCORIS take scale 1 - so such a module's
lokr_w2 is written multiplied by alpha / r.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from loraflow.atomic import atomic_save_safetensors
from loraflow.errors import InputError
from loraflow.models.lora import formats, kohya_keys, lycoris
from loraflow.models.lora.metadata import sshs_hashes, training_metadata

LORA_TYPES = ("lora", "locon", "loha", "lokr", "dora")
LYCORIS_TYPES = ("loha", "lokr", "dora")  # written with LyCORIS keys (no diffusers/peft twin)
_SUFFIXES = lycoris.LOHA_KEYS + lycoris.LOKR_KEYS  # the LyCORIS key names the loader reads


def peft_config(lora_type: str, rank: int, alpha: float, targets):
    """The peft config that trains `lora_type` on `targets`; every type starts as a no-op."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    targets = list(targets)
    if lora_type in ("lora", "locon", "dora"):
        # Gaussian A, zero B (diffusers' train_text_to_image_lora_sdxl.py); DoRA's magnitude starts at ||W||
        return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=targets,
                          use_dora=lora_type == "dora")
    if lora_type == "loha":  # peft zero-inits hada_w2_b: the product starts at 0
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets)
    if lora_type == "lokr":  # peft zero-inits w1 (or w1_b): the Kronecker product starts at 0
        return LoKrConfig(r=rank, alpha=alpha, target_modules=targets)
    raise InputError(f"unknown lora_type '{lora_type}'; choose one of: {', '.join(LORA_TYPES)}")


def to_kohya(peft_state: dict[str, Any], component: str, family: str, *, rank: int, alpha: float) -> dict[str, Any]:
    """One model's peft state dict (any type) -> kohya / LyCORIS keys with a float32 alpha per module."""
    import torch

    groups: dict[str, dict[str, Any]] = {}
    for key, value in peft_state.items():
        module, suffix = _split(key)
        groups.setdefault(formats.canonical_module(component, module), {})[suffix] = value
    out: dict[str, Any] = {}
    for module, parts in groups.items():
        try:
            name = kohya_keys.diffusers_to_kohya(component, module, family)
        except kohya_keys.UnmappedModuleError as e:
            raise InputError(f"cannot write kohya keys: {e}") from None
        if "lora_A.weight" in parts:
            down, up = parts.pop("lora_A.weight"), parts.pop("lora_B.weight")
            out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = down, up
            magnitude = parts.pop("lora_magnitude_vector", None)
            if magnitude is not None:  # peft: per output channel, (out,) or (1, out, 1, 1)
                out[f"{name}.dora_scale"] = magnitude.reshape(up.shape[0], *[1] * (down.ndim - 1))
        if "lokr_w2" in parts and "lokr_w1_a" not in parts:  # whole factors: ComfyUI/LyCORIS scale is 1
            parts["lokr_w2"] = parts["lokr_w2"] * (alpha / rank)
        for suffix, value in parts.items():
            out[f"{name}.{suffix}"] = value
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=torch.float32)
    return out


def _split(key: str) -> tuple[str, str]:
    """`down_blocks....to_q.hada_w1_a` -> (module, suffix), for every peft adapter key we write."""
    for marker in (".lora_A.", ".lora_B."):
        if marker in key:
            head, _, tail = key.partition(marker)
            return head, marker[1:] + tail
    if key.endswith(".lora_magnitude_vector") or ".lora_magnitude_vector." in key:
        return key.split(".lora_magnitude_vector")[0], "lora_magnitude_vector"
    module, _, suffix = key.rpartition(".")
    if suffix not in _SUFFIXES:
        raise InputError(f"unexpected adapter key '{key}' in the trained state")
    return module, suffix


def save_adapter(path: str | os.PathLike, unet_state: dict, text_encoder_states: dict | None = None, *,
                 family: str, lora_type: str, rank: int, alpha: float, dtype=None,
                 metadata: dict[str, Any] | None = None, output_name: str | None = None,
                 resolution=None, tag_frequency=None) -> Path:
    """Write a trained LoHa / LoKr / DoRA as one kohya-layout `.safetensors` (atomic), with kohya's
    training metadata and `ss_network_module = lycoris.kohya` + its `algo` as LyCORIS records them."""
    import torch

    dtype = torch.float16 if dtype is None else dtype
    tensors = to_kohya(unet_state, "unet", family, rank=rank, alpha=alpha)
    for component, state in (text_encoder_states or {}).items():
        if state:
            tensors.update(to_kohya(state, component, family, rank=rank, alpha=alpha))
    if not tensors:
        raise InputError("no adapter weights to save")
    tensors = {k: (v if k.endswith(".alpha") else v.detach().to("cpu", dtype)).contiguous() for k, v in tensors.items()}
    path = Path(path)
    meta = training_metadata(family=family, rank=rank, alpha=alpha, output_name=output_name or path.stem,
                             resolution=resolution, tag_frequency=tag_frequency,
                             has_text_encoder=bool(text_encoder_states), extra=metadata)
    args = json.loads(meta.get("ss_network_args") or "{}")
    meta["ss_network_module"] = "lycoris.kohya"
    meta["ss_network_args"] = json.dumps({**args, "algo": "lora" if lora_type == "dora" else lora_type,
                                          **({"dora_wd": "True"} if lora_type == "dora" else {})})
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = sshs_hashes(tensors, meta)
    return atomic_save_safetensors(tensors, path, meta)
