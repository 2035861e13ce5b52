"""ComfyUI's regional conditioning (core `ConditioningSetMask`, `ConditioningSetArea`,
`ConditioningSetAreaPercentage`, combined with `ConditioningCombine`) run by loraflow's regional
attention (`generate/regional_attention.py`), the engine `generate --region` uses.

A sampler's positive CONDITIONING is then one conditioning without an area (the base prompt) and up to
`MAX_REGIONS` with one. Each area becomes a region's coverage at the latent grid: a MASK or a box
averaged over each latent cell (as `generate.regions.region_masks` averages a mask image), times the
node's strength. Unlike ComfyUI, which runs the model once per conditioning and averages the noise
predictions by area, the prompts are mixed inside cross-attention (attention couple): a region takes
its coverage's share of each spot and the base the rest, so a region of strength s in [0, 1] leaves the
base 1 - s there. A workflow that draws the same regions as `generate --region` gets the same picture.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraflow.generate.regions import MAX_REGIONS
from loraflow.serve.comfy.values import CondArea, Conditioning, ControlHint, NodeError, cond_entries

MAX_STRENGTH = 1.0  # a region's share of a spot; ComfyUI's nodes accept up to 10 (a noise-prediction weight)


def checked_area(node_type: str, strength: float, set_cond_area: str = "default") -> None:
    """What a regional node cannot do here is an error on the node, never silently different."""
    if set_cond_area != "default":
        raise NodeError(f"{node_type}: set_cond_area '{set_cond_area}' is not supported here (regions are drawn "
                        "at the picture's own resolution by regional attention); use 'default'")
    if not 0.0 <= strength <= MAX_STRENGTH:
        raise NodeError(f"{node_type}: strength {strength:g} is not supported here: a region takes a share of "
                        f"each spot it covers, 0 to {MAX_STRENGTH:g} (the base prompt keeps the rest)")


def coverage(area: CondArea, height: int, width: int, scale: int):
    """(h, w) float coverage of `area` at the latent grid of a height x width picture, h = height / scale:
    the MASK (or the box drawn at the picture's pixels) averaged over each latent cell, times strength."""
    import torch
    import torch.nn.functional as F

    if area.mask is not None:
        m = area.mask.reshape(-1, area.mask.shape[-2], area.mask.shape[-1])[0].float().clamp(0, 1)  # the first mask
    else:
        x, y, w, h = area.box
        if area.fractions:
            x, w, y, h = x * width, w * width, y * height, h * height
        x0, y0 = min(round(x), width), min(round(y), height)
        m = torch.zeros((height, width))
        m[y0:min(round(y + h), height), x0:min(round(x + w), width)] = 1.0
    cells = F.interpolate(m[None, None], size=(height // scale, width // scale), mode="area")[0, 0]
    return cells * area.strength


@dataclass
class RegionalInputs:
    """What the sampler hands the engine for one positive / negative pair."""

    positive: Any  # PromptEmbeds: base then regions along the tokens when `regions` is set
    negative: Any  # PromptEmbeds, repeated as often
    controls: tuple[ControlHint, ...]
    regions: Any = None  # regional_attention.RegionalConditioning, or None for a plain prompt


def regional_inputs(session, node_type: str, positive, negative, height: int, width: int) -> RegionalInputs:
    """A sampler's CONDITIONING inputs -> embeddings (and the regional conditioning when the positive
    has areas) for a height x width picture."""
    neg = cond_entries(negative)
    if len(neg) > 1 or neg[0].area is not None:
        raise NodeError(f"{node_type}: negative: masked or combined conditionings are not supported here; "
                        "the negative prompt covers the whole picture")
    entries = cond_entries(positive)
    bases = [c for c in entries if c.area is None]
    areas = [c for c in entries if c.area is not None]
    if not areas:
        if len(bases) > 1:
            raise NodeError(f"{node_type}: positive: {len(bases)} conditionings combined without a mask or area; "
                            "combine one (the base prompt) with masked ones (ConditioningSetMask / SetArea)")
        return RegionalInputs(bases[0].embeds, neg[0].embeds, bases[0].controls)
    if len(bases) != 1:
        raise NodeError(f"{node_type}: positive: regions need exactly one conditioning without a mask or area "
                        f"(the base prompt, drawn where no region covers), got {len(bases)}")
    if len(areas) > MAX_REGIONS:
        raise NodeError(f"{node_type}: positive: {len(areas)} masked conditionings; at most {MAX_REGIONS}")
    base = bases[0]
    if any(c.controls != base.controls for c in areas):
        raise NodeError(f"{node_type}: positive: ControlNet hints differ between the combined conditionings; "
                        "apply ControlNetApplyAdvanced after ConditioningCombine")
    return _regional(session, base, areas, neg[0], height, width)


def _regional(session, base: Conditioning, areas: list[Conditioning], negative: Conditioning, height: int,
              width: int) -> RegionalInputs:
    import torch

    from loraflow.generate.regional_attention import RegionalConditioning, regional_embeds

    embeds = session.same_length([base.embeds, *(c.embeds for c in areas), negative.embeds])
    pos, neg = regional_embeds(embeds[0], embeds[1:-1], embeds[-1])
    scale = session.pipe.vae_scale_factor
    masks = torch.stack([coverage(c.area, height, width, scale) for c in areas])  # (R, h, w)
    return RegionalInputs(pos, neg, base.controls, RegionalConditioning(masks, embeds[0].embeds.shape[1]))
