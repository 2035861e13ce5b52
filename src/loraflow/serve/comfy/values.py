"""Values that flow along workflow links. Conventions follow ComfyUI where a client can see them:
LATENT is a `Latent` (ComfyUI's `{"samples": (B, C, h, w), "noise_mask": ...}` as a type), samples
scaled by the VAE's scaling factor (diffusers' convention),
C the VAE's latent channels (4 for SD/SDXL) and (h, w) the pixel size over the pipeline's
vae_scale_factor (8 for SD/SDXL); EmptyLatentImage's model-less (B, 4, H/8, W/8) zeros are refitted
by the samplers.
IMAGE is a float tensor (B, H, W, C) in [0, 1], MASK is (B, H, W)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import LoraflowError
from loraflow.generate.session import LoraSpec


class NodeError(LoraflowError):
    """A node that could not run; reported for that node (ComfyUI `execution_error`)."""


@dataclass(frozen=True)
class WorkflowJob:
    """A queued ComfyUI prompt (the payload POST /prompt stores)."""

    prompt: dict  # API format, normalised: node id -> {"class_type", "inputs"}
    outputs: list[str]  # the output nodes to run, in order
    extra_data: dict = field(default_factory=dict)  # the client's extra_data (extra_pnginfo)

    @classmethod
    def from_payload(cls, payload: dict) -> "WorkflowJob":
        return cls(payload["prompt"], list(payload["outputs"]), payload.get("extra_data") or {})


@dataclass(frozen=True)
class Shown:
    """What an output node returns: its outputs and what the client is shown (ComfyUI's "ui")."""

    result: tuple
    ui: dict


@dataclass(frozen=True)
class CachedNode:
    """A node's outputs kept between runs, reused while its cache key is unchanged."""

    key: str
    outputs: tuple
    ui: dict | None = None


@dataclass(frozen=True)
class Latent:
    """LATENT: a batch of latents and, for inpainting, where sampling may change them."""

    samples: Any  # (B, C, h, w)
    noise_mask: Any = None  # (B, 1, H, W) in pixels, 1 = redraw, 0 = keep; None: everywhere


@dataclass(frozen=True)
class IPAdapterRef:
    """IPADAPTER: an IP-Adapter folder or file under models_dir/ipadapter (its image encoder beside it)."""

    path: str


@dataclass(frozen=True)
class CLIPVisionRef:
    """CLIP_VISION: a transformers CLIP vision folder under models_dir/clip_vision."""

    path: str


@dataclass(frozen=True, eq=False)  # holds tensors: compared by identity
class IPAdapterUse:
    """One IPAdapter node's reference images, applied by the samplers that use the MODEL it returned."""

    adapter: IPAdapterRef
    image: Any  # IMAGE (B, H, W, C): each image of the batch is a reference
    weight: float
    attn_mask: Any = None  # MASK (B or 1, H, W), 1 = where the references act; None: everywhere
    label: str = ""  # the node, named in the infotext-like records
    clip_vision: CLIPVisionRef | None = None  # the image encoder, when not the one beside the adapter


@dataclass(frozen=True)
class ModelRef:
    """MODEL, CLIP and VAE all point at one loaded pipeline (kept in the model cache, reloaded if it
    was evicted); `loras` are (path, weight) pairs applied when this reference is used, `references`
    the IP-Adapter references the samplers apply."""

    model: str  # a resolved model path or tiny:*
    loras: tuple[tuple[str, float], ...] = ()
    references: tuple[IPAdapterUse, ...] = ()

    def session(self, ctx):
        return ctx.models.session(self.model)

    def with_lora(self, path: str, weight: float) -> "ModelRef":
        return ModelRef(self.model, self.loras + ((path, weight),), self.references) if weight != 0 else self

    def with_reference(self, use: IPAdapterUse) -> "ModelRef":
        return ModelRef(self.model, self.loras, self.references + (use,))


def activate(ctx, ref: ModelRef):
    """The session of `ref` with exactly `ref.loras` applied."""
    session = ref.session(ctx)
    session.set_loras([LoraSpec(Path(p), w) for p, w in ref.loras])
    return session


@dataclass(frozen=True)
class ControlNetRef:
    """CONTROL_NET: a ControlNet file; its weights load when a sampler uses it, once per model."""

    path: str


@dataclass
class ControlHint:
    controlnet: ControlNetRef
    image: Any  # IMAGE (B, H, W, C)
    strength: float
    start_percent: float
    end_percent: float


@dataclass(frozen=True, eq=False)  # may hold a tensor: compared by identity
class CondArea:
    """Where a conditioning draws (ComfyUI's ConditioningSetMask / SetArea / SetAreaPercentage): a MASK
    or a box, and the share of each covered spot it takes (`strength`, 0..1 here; the rest is the base's)."""

    mask: Any = None  # MASK (H, W) in [0, 1], stretched to the picture; None: the box
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # (x, y, width, height)
    fractions: bool = True  # box in fractions of the picture (SetAreaPercentage), else in pixels (SetArea)
    strength: float = 1.0


@dataclass
class Conditioning:
    """CONDITIONING: one prompt's embeddings (a `PromptEmbeds`), with the ControlNet hints attached to it
    and, when set, the area it draws in."""

    embeds: Any
    model: str
    controls: tuple[ControlHint, ...] = field(default_factory=tuple)
    area: CondArea | None = None


@dataclass(frozen=True)
class CombinedConditioning:
    """CONDITIONING made by ConditioningCombine: ComfyUI's list of conditionings, in order. Here one of
    them is the base prompt (no area) and the others are regions (`serve/comfy/regions.py`)."""

    entries: tuple[Conditioning, ...]


def cond_entries(value) -> tuple[Conditioning, ...]:
    """The conditionings a CONDITIONING value holds (one, or a combination's)."""
    return value.entries if isinstance(value, CombinedConditioning) else (value,)


def map_conditioning(value, fn):
    """`fn` applied to each conditioning of a CONDITIONING value, keeping its form."""
    if isinstance(value, CombinedConditioning):
        return CombinedConditioning(tuple(fn(c) for c in value.entries))
    return fn(value)
