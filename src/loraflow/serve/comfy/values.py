"""Values that flow along workflow links. Conventions follow ComfyUI where a client can see them:
LATENT is `{"samples": (B, C, h, w)}` (scaled by the VAE's scaling factor, diffusers' convention),
C the VAE's latent channels (4 for SD/SDXL) and (h, w) the pixel size over the pipeline's
vae_scale_factor (8 for SD/SDXL); EmptyLatentImage's model-less (B, 4, H/8, W/8) zeros are refitted
by the samplers.
IMAGE is a float tensor (B, H, W, C) in [0, 1], MASK is (B, H, W)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelRef:
    """MODEL, CLIP and VAE all point at one loaded pipeline (kept in the model cache, reloaded if it
    was evicted); `loras` are (path, weight) pairs applied when this reference is used."""

    model: str  # a resolved model path or tiny:*
    loras: tuple[tuple[str, float], ...] = ()

    def session(self, ctx):
        return ctx.models.session(self.model)

    def with_lora(self, path: str, weight: float) -> "ModelRef":
        return ModelRef(self.model, self.loras + ((path, weight),)) if weight != 0 else self


def activate(ctx, ref: ModelRef):
    """The session of `ref` with exactly `ref.loras` applied."""
    from pathlib import Path

    from loraflow.generate.session import LoraSpec

    session = ref.session(ctx)
    session.set_loras([LoraSpec(Path(p), w) for p, w in ref.loras])
    return session


@dataclass
class ControlHint:
    controlnet: Any  # a ControlNet reference
    image: Any  # IMAGE (B, H, W, C)
    strength: float
    start_percent: float
    end_percent: float


@dataclass
class Conditioning:
    """CONDITIONING: one prompt's embeddings (a `PromptEmbeds`), with the ControlNet hints attached to it."""

    embeds: Any
    model: str
    controls: tuple[ControlHint, ...] = field(default_factory=tuple)
