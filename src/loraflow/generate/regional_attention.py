"""Regional prompting in the UNet's cross-attention ("attention couple": A1111's Regional Prompter
in attention mode, ComfyUI's attention-couple nodes).

The conditioning of a picture with R regions is its base prompt and the R region prompts, each
`tokens` long, concatenated along the token axis: (B, (1 + R) * tokens, D). Concatenating keeps
every family's own text path unchanged (Kolors' `text_proj` projects each token inside the UNet).
The negative prompt is repeated 1 + R times, so the unconditional half of classifier-free guidance
sees its plain negative prompt in every slice. For the run, every cross-attention (`attn2`)
processor is wrapped: for each prompt it calls the wrapped processor with that prompt's token slice
(plus any IP-Adapter image tokens, so IP-Adapter processors and their `ip_adapter_masks` keep working
inside), and mixes the outputs per query position with the region masks at that layer's grid.

Weights at a position, from the coverages c_r in [0, 1] (`regions.region_masks`, area-averaged to
the layer's grid) and S = sum of c_r:
    region r: c_r / max(S, 1)    base: max(0, 1 - S)
so where regions overlap they share the position in proportion to their coverage, the base prompt
fills what no region covers, and the weights always sum to 1 (the attention output keeps its scale).
A prompt whose weight is zero everywhere at a layer is not computed there.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from loraflow.errors import ConfigError
from loraflow.models.families import PromptEmbeds


@dataclass
class RegionalConditioning:
    """What the wrapped processors need besides the embeddings."""

    masks: Any  # (R, h, w) float coverage per region at the latent grid
    tokens: int  # tokens of each prompt: base = [0, tokens), region r = [r * tokens, (r + 1) * tokens)

    def weights(self, queries: int) -> Any:
        """(1 + R, queries) mixing weights of base and regions at a layer with `queries` positions."""
        grid = layer_grid(self.masks.shape[1], self.masks.shape[2], queries)
        cover = F.interpolate(self.masks[None].float(), size=grid, mode="area")[0]  # (R, gh, gw)
        total = cover.sum(0)
        regions = cover / total.clamp(min=1.0)
        base = (1.0 - total).clamp(min=0.0)
        return torch.cat([base[None], regions]).flatten(1)


def layer_grid(height: int, width: int, queries: int) -> tuple[int, int]:
    """The (h, w) grid of a UNet layer with `queries` positions: each down block halves the latent
    grid, rounding up (a stride-2 convolution with padding 1)."""
    h, w = height, width
    while h * w > queries:
        h, w = (h + 1) // 2, (w + 1) // 2
    if h * w != queries:
        raise ConfigError(f"regional prompts: a layer with {queries} positions is no downsampling of the "
                          f"{height}x{width} latent grid")
    return h, w


class RegionalAttnProcessor(torch.nn.Module):
    """Wraps one cross-attention processor for a run. An nn.Module, so a wrapped IP-Adapter processor
    stays a submodule of its Attention (diffusers drops a module processor replaced by a plain one)."""

    def __init__(self, inner, conditioning: RegionalConditioning):
        super().__init__()
        self.inner = inner
        self.conditioning = conditioning
        # (queries, device, dtype) -> ((1 + R, queries) weights, the prompts with any weight at that layer)
        self._weights: dict[tuple, tuple[Any, list[int]]] = {}

    # diffusers' Attention passes only the cross_attention_kwargs named in this signature
    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 ip_adapter_masks=None, **kwargs):
        if encoder_hidden_states is None:  # not cross-attention after all
            return self.inner(attn, hidden_states, None, attention_mask, temb, **kwargs)
        if ip_adapter_masks is not None:
            kwargs["ip_adapter_masks"] = ip_adapter_masks
        text, images = encoder_hidden_states, None
        if isinstance(text, tuple):  # IP-Adapter: (text tokens, [image tokens per adapter])
            text, images = text
        n = self.conditioning.tokens
        weights, active = self.weights(hidden_states.shape[1], hidden_states.device, hidden_states.dtype)
        if text.shape[1] < n * weights.shape[0]:
            raise ConfigError(f"regional prompts: {text.shape[1]} conditioning tokens, expected at least "
                              f"{weights.shape[0]} prompts of {n}")
        trailing = text[:, n * weights.shape[0]:]  # image tokens appended to the text (older IP-Adapter form)
        out = None
        for k in active:
            w = weights[k]
            part = text[:, k * n:(k + 1) * n]
            part = torch.cat([part, trailing], dim=1) if trailing.shape[1] else part.contiguous()
            mask = _slice_mask(attention_mask, text.shape[1], k, n, weights.shape[0])
            y = self.inner(attn, hidden_states, part if images is None else (part, images), mask, temb, **kwargs)
            y = y * w[None, :, None]  # (B, queries, C) * (1, queries, 1)
            out = y if out is None else out + y
        return out

    def weights(self, queries: int, device, dtype) -> tuple[Any, list[int]]:
        """The mixing weights at a layer and which prompts have any: decided once here, because asking a
        CUDA tensor in every call would wait for the device at every layer of every step."""
        key = (queries, device, dtype)
        if key not in self._weights:
            weights = self.conditioning.weights(queries)
            active = [k for k in range(weights.shape[0]) if bool(weights[k].any())]
            self._weights[key] = (weights.to(device, dtype), active)
        return self._weights[key]


def _slice_mask(mask, total: int, k: int, n: int, prompts: int):
    """An attention mask over the conditioning tokens (B, 1, total) follows prompt k's slice (and
    keeps the trailing image tokens' part)."""
    if mask is None or mask.shape[-1] != total:
        return mask
    return torch.cat([mask[..., k * n:(k + 1) * n], mask[..., n * prompts:]], dim=-1)


@contextmanager
def regional_attention(unet, conditioning: RegionalConditioning | None):
    """For the `with` block, the UNet's cross-attention processors are wrapped; the originals are
    put back afterwards, also when the run fails."""
    if conditioning is None:
        yield
        return
    original = dict(unet.attn_processors)
    wrapped = {name: RegionalAttnProcessor(p, conditioning) if name.endswith("attn2.processor") else p
               for name, p in original.items()}
    unet.set_attn_processor(wrapped)
    try:
        yield
    finally:
        unet.set_attn_processor(original)


def regional_embeds(base: PromptEmbeds, regions: list[PromptEmbeds], negative: PromptEmbeds):
    """(positive, negative) of one picture: base and regions concatenated along the tokens, the
    negative repeated as often; all of one length already (`GenerationSession.encode`). The pooled
    embedding (SDXL-class micro-conditioning) is the base prompt's, as Regional Prompter keeps it."""
    lengths = {e.embeds.shape[1] for e in [base, *regions, negative]}
    if len(lengths) != 1:
        raise ValueError(f"regional prompts need one length per prompt, got {sorted(lengths)}")
    positive = PromptEmbeds(torch.cat([base.embeds] + [r.embeds for r in regions], dim=1), base.pooled)
    negative = PromptEmbeds(negative.embeds.repeat(1, 1 + len(regions), 1), negative.pooled)
    return positive, negative
