"""kohya's daily LoRA tools: resize (SVD to a lower rank), merge several LoRAs into one, extract a LoRA
from a fine-tuned model (sd-scripts `networks/resize_lora.py`, `svd_merge_lora.py`,
`extract_lora_from_models.py`; our own code).

Every tool works on per-module deltas dW (out, in * kh * kw) and writes kohya files: for a target
rank k, dW ~ U_k S_k V_k^T with up = U_k sqrt(S_k), down = sqrt(S_k) V_k^T and alpha = k (scale 1),
the best rank-k approximation in Frobenius norm (Eckart-Young). "Kept energy" is the share of
||dW||_F^2 the kept singular values hold, sum(S_k^2) / sum(S^2); kohya's "fro retained" is its root.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.atomic import atomic_save_safetensors
from loraflow.errors import InputError
from loraflow.models.lora import formats, kohya_keys, lycoris
from loraflow.models.lora.load import guess_family, read_lora
from loraflow.models.lora.metadata import sshs_hashes


@dataclass
class ModuleRank:
    """What SVD kept of one module (a row of the report `lora resize` prints)."""

    target: str  # `<component>.<module>`
    old_rank: int  # rank of the delta before (its factor rank; min(out, in) for a full delta)
    new_rank: int
    kept_energy: float  # sum(S_k^2) / sum(S^2), 0..1
    max_ratio: float  # S_max / S_k-th: how flat the kept spectrum is (kohya prints it too)

    @property
    def fro_retained(self) -> float:  # kohya's `fro retained`
        return math.sqrt(self.kept_energy)


def module_deltas(lora) -> dict[str, tuple[Any, float]]:
    """`<component>.<module>` -> (unscaled adapter as `lycoris.Adapter`, alpha) for any LoRA file."""
    if lora.adapters:
        return {t: (a, lycoris.nominal_alpha(a)) for t, a in lora.adapters.items()}
    out = {}
    for target, (rank, alpha) in lora.modules().items():
        tensors = {"lora_down.weight": lora.neutral[f"{target}.lora_A.weight"],
                   "lora_up.weight": lora.neutral[f"{target}.lora_B.weight"]}
        out[target] = (lycoris.Adapter("lora", tensors, alpha), alpha)
    return out


def delta_shape(adapter) -> tuple[int, ...]:
    """The weight shape an adapter's delta has, from its own tensors. A LoHa / LoKr conv module
    without Tucker factors stores its kernel flattened: it comes out as (out, in * kh * kw)."""
    t = {k: tuple(v.shape) for k, v in adapter.tensors.items()}
    if adapter.kind == "lora":
        kernel = t["lora_mid.weight"][2:] if "lora_mid.weight" in t else t["lora_down.weight"][2:]
        return (t["lora_up.weight"][0], t["lora_down.weight"][1], *kernel)
    if adapter.kind == "diff":
        return t["diff"]
    if adapter.kind == "loha":
        if "hada_t1" in t:
            return (t["hada_w1_a"][1], t["hada_w1_b"][1], *t["hada_t1"][2:])
        return (t["hada_w1_a"][0], t["hada_w1_b"][1])
    w1 = t.get("lokr_w1") or (t["lokr_w1_a"][0], t["lokr_w1_b"][1])
    if "lokr_w2" in t:
        w2 = t["lokr_w2"]
    elif "lokr_t2" in t:
        w2 = (t["lokr_w2_a"][1], t["lokr_w2_b"][1], *t["lokr_t2"][2:])
    else:
        w2 = (t["lokr_w2_a"][0], *t["lokr_w2_b"][1:])
    return (w1[0] * w2[0], w1[1] * w2[1], *w2[2:])


def low_rank(delta, shape: tuple[int, ...], *, rank: int | None, energy: float | None, target: str,
             old_rank: int) -> tuple[Any, Any, ModuleRank]:
    """SVD of `delta` (out, in*k) to (up, down) at `rank`, or at the fewest ranks keeping `energy`."""
    import torch

    U, S, Vh = torch.linalg.svd(delta.float(), full_matrices=False)
    total = float((S ** 2).sum())
    if energy is not None:
        share = torch.cumsum(S ** 2, 0) / max(total, 1e-30)
        k = int(torch.searchsorted(share, torch.tensor(energy - 1e-7)).item()) + 1
        k = min(k, rank) if rank is not None else k
    else:
        k = rank
    k = max(1, min(k, S.numel()))
    kept = float((S[:k] ** 2).sum()) / total if total > 0 else 1.0
    root = S[:k].sqrt()
    up = (U[:, :k] * root).reshape(shape[0], k, *[1] * (len(shape) - 2))
    down = (root[:, None] * Vh[:k]).reshape(k, *shape[1:])
    ratio = float(S[0] / S[k - 1]) if float(S[k - 1]) > 0 else math.inf
    return up.contiguous(), down.contiguous(), ModuleRank(target, old_rank, k, kept, ratio)


def _write_kohya(dst, neutral: dict[str, Any], alphas: dict[str, float], family: str,
                 metadata: dict[str, str], dtype) -> Path:

    neutral = {k: v.to(dtype) for k, v in neutral.items()}
    tensors = formats.neutral_to_kohya(neutral, alphas, family)
    ranks = formats.module_ranks(neutral)
    meta = {k: v for k, v in metadata.items() if k not in ("lora_adapter_metadata", "format")}
    meta["ss_network_dim"] = str(formats.most_common(ranks.values()))
    meta["ss_network_alpha"] = str(float(formats.most_common(alphas.values())))
    meta["ss_network_module"] = "networks.lora"
    meta["sshs_model_hash"], meta["sshs_legacy_hash"] = sshs_hashes(tensors, meta)
    return atomic_save_safetensors(tensors, dst, meta)


def _family(lora, family: str | None) -> str:

    family = family or guess_family(lora)
    if family is None:
        raise InputError(f"{lora.name}: cannot tell which model family it is for; pass --family")
    return family


# ---- resize ---------------------------------------------------------------------------------
def resize_lora(src, dst, *, rank: int | None = None, energy: float | None = None, family: str | None = None,
                allow_pickle: bool = False) -> list[ModuleRank]:
    """Rewrite `src` at a lower rank (`rank`), or per module at the fewest ranks keeping `energy`
    (0..1) of its delta, capped by `rank` if both are given. The scale of every module is kept."""
    import torch

    if rank is None and energy is None:
        raise InputError("lora resize needs --rank, --kept-energy or both")
    if energy is not None and not 0 < energy <= 1:
        raise InputError(f"--kept-energy must be in (0, 1], got {energy}")
    if rank is not None and rank < 1:
        raise InputError(f"--rank must be at least 1, got {rank}")
    lora = read_lora(src, allow_pickle=allow_pickle)
    family = _family(lora, family)
    neutral, alphas, report = {}, {}, []
    for target, (adapter, _) in module_deltas(lora).items():
        shape = delta_shape(adapter)
        delta = adapter.delta(shape).reshape(shape[0], -1)  # scale applied
        up, down, row = low_rank(delta, shape, rank=rank, energy=energy, target=target,
                                 old_rank=adapter.rank or min(shape[0], delta.shape[1]))
        neutral[f"{target}.lora_A.weight"], neutral[f"{target}.lora_B.weight"] = down, up
        alphas[target] = float(row.new_rank)  # scale 1: the scale is inside up @ down
        report.append(row)
    dtype = next(iter(lora.state_dict.values())).dtype
    meta = dict(lora.metadata, loraflow_resized_from=Path(src).name)
    _write_kohya(dst, neutral, alphas, family, meta, dtype if dtype.is_floating_point else torch.float16)
    return report


# ---- merge several LoRAs into one ---------------------------------------------------------------
def merge_loras(files: list[tuple[str | os.PathLike, float]], dst, *, rank: int, family: str | None = None,
                allow_pickle: bool = False) -> list[ModuleRank]:
    """sum_i weight_i * dW_i per module, back to a LoRA of `rank` by SVD (sd-scripts `svd_merge_lora.py`)."""
    import torch

    if not files:
        raise InputError("lora merge needs at least one LoRA")
    loras = [(read_lora(path, allow_pickle=allow_pickle), float(weight)) for path, weight in files]
    family = _family(loras[0][0], family)
    sums: dict[str, Any] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for lora, weight in loras:
        for target, (adapter, _) in module_deltas(lora).items():
            shape = delta_shape(adapter)
            if target in shapes and shapes[target] != shape:
                raise InputError(f"{lora.name}: shape mismatch at '{target}': {shape} here, "
                                 f"{shapes[target]} in an earlier LoRA")
            shapes[target] = shape
            sums[target] = sums.get(target, 0) + weight * adapter.delta(shape).reshape(shape[0], -1)
    neutral, alphas, report = {}, {}, []
    for target, delta in sums.items():
        up, down, row = low_rank(delta, shapes[target], rank=rank, energy=None, target=target,
                                 old_rank=min(delta.shape))
        neutral[f"{target}.lora_A.weight"], neutral[f"{target}.lora_B.weight"] = down, up
        alphas[target] = float(row.new_rank)
        report.append(row)
    sources = ", ".join(f"{Path(p).name}:{w:g}" for p, w in files)
    _write_kohya(dst, neutral, alphas, family, {"loraflow_merged_from": sources}, torch.float32)
    return report


# ---- extract ----------------------------------------------------------------------------------
def extract_lora(base_pipe, tuned_pipe, dst, *, rank: int, family: str, components: tuple[str, ...],
                 min_diff: float = 0.0) -> list[ModuleRank]:
    """The LoRA of `rank` closest to (tuned - base) in every Linear / Conv2d module with a kohya name
    whose weights differ by more than `min_diff` (max abs), for the given pipeline components."""
    import torch

    neutral, alphas, report = {}, {}, []
    for component in components:
        base_model, tuned_model = getattr(base_pipe, component, None), getattr(tuned_pipe, component, None)
        if base_model is None or tuned_model is None:
            continue
        tuned_modules = dict(tuned_model.named_modules())
        for name, module in base_model.named_modules():
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                continue
            other = tuned_modules.get(name)
            if other is None or other.weight.shape != module.weight.shape:
                raise InputError(f"the fine-tuned model's {component}.{name} does not match the base model's")
            delta = other.weight.detach().float() - module.weight.detach().float()
            if float(delta.abs().max()) <= min_diff:
                continue
            target = f"{component}.{formats.canonical_module(component, name)}"
            try:
                kohya_keys.diffusers_to_kohya(component, target.partition(".")[2], family)
            except kohya_keys.UnmappedModuleError:
                continue  # no kohya name (e.g. a norm-like layer): no tool could load it
            shape = tuple(delta.shape)
            up, down, row = low_rank(delta.reshape(shape[0], -1), shape, rank=rank, energy=None, target=target,
                                     old_rank=min(shape[0], delta[0].numel()))
            neutral[f"{target}.lora_A.weight"], neutral[f"{target}.lora_B.weight"] = down, up
            alphas[target] = float(row.new_rank)
            report.append(row)
    if not neutral:
        raise InputError("the fine-tuned model does not differ from the base model in any LoRA-able module")
    _write_kohya(dst, neutral, alphas, family, {"loraflow_extracted": f"rank {rank}"}, torch.float32)
    return report


def format_report(rows: list[ModuleRank], limit: int | None = None) -> str:
    """kohya resize_lora's per-module lines, then the totals."""
    lines = [f"{r.target}: rank {r.old_rank} -> {r.new_rank}, kept energy {100 * r.kept_energy:.2f}%, "
             f"fro retained {100 * r.fro_retained:.2f}%, max(S) ratio {r.max_ratio:.3g}"
             for r in rows[:limit]]
    if limit is not None and len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more modules")
    if rows:
        lines.append(f"{len(rows)} modules, mean kept energy {100 * sum(r.kept_energy for r in rows) / len(rows):.2f}%, "
                     f"lowest {100 * min(r.kept_energy for r in rows):.2f}%")
    return "\n".join(lines)
