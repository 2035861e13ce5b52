"""Reference images through an IP-Adapter: what a job asks for and the pipeline arguments it becomes.

On the command line a reference is `IMAGE[:SCALE]` (`--reference kitten.png:0.6`); in config and
story files also `{image: kitten.png, scale: 0.6, mask: left.png}`. A mask (white = where the
reference acts) confines it to a region, through diffusers' IP-Adapter attention masks.

Each reference attends on its own and their effects add, each times its scale (diffusers'
`IPAdapterAttnProcessor2_0` with `ip_adapter_masks`: one mask per image). The scale rides on the
mask (mask * scale, with the adapter's own scale 1) because diffusers keeps one scale per adapter,
and the processor's sum is linear in the downsampled mask. A job whose scales are all 0 does not
attach the adapter at all, so it is the base model's image, byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loraflow.config import Options, opt, split_weighted
from loraflow.errors import ConfigError
from loraflow.generate.regions import region_image

MAX_REFERENCE_SCALE = 10.0  # far past any useful strength (1 is the adapter's trained scale)
# references per image: each is one more encoder pass and one more (H, W) mask in every cross-attention
MAX_REFERENCES = 16


class Reference(Options):
    image: str = opt(..., "reference image file")
    scale: float = opt(1.0, "how strongly it steers (IP-Adapter scale; 0 = not at all)",
                       aliases=("weight", "strength"), ge=0.0, le=MAX_REFERENCE_SCALE)
    mask: str | None = opt(None, "where it acts: a mask image, white = there, or a region name (left, right, top, "
                                 "bottom; a story character's region); default: everywhere")

    @classmethod
    def parse(cls, value) -> "Reference":
        """A `Reference`, a mapping, or the `IMAGE[:SCALE]` text."""
        return cls.from_value(value, "reference", "IMAGE[:SCALE]", parse_reference_arg)


def parse_reference_arg(text: str) -> "Reference":
    """`ref.png`, `ref.png:0.6`; a path may hold colons (C:\\x.png): the one NAME[:NUMBER] splitter."""
    image, scale = split_weighted(text, None, what="scale")
    return Reference.from_dict({"image": image, **({"scale": scale} if scale is not None else {})},
                               source=f"--reference {text!r}")


def parse_references(value) -> list[Reference]:
    """A field value (one reference or a list, as text or mappings) -> fresh Reference copies."""
    items = [value] if isinstance(value, (str, dict, Reference)) else value
    if not isinstance(items, list):
        raise ConfigError(f"reference: expected a list of references, got {type(value).__name__}")
    return [Reference.parse(item).model_copy() for item in items]


@dataclass(frozen=True)
class PreparedReferences:
    """One batch's references, loaded: what the session turns into pipeline arguments."""

    adapter: str  # the --ip-adapter folder or file
    references: tuple[Reference, ...]
    images: tuple  # PIL RGB, as given (the adapter's image processor resizes and crops)
    masks: tuple  # PIL L at the output size, or None (everywhere)
    allow_pickle: bool = False
    image_encoder: str | None = None  # a CLIP vision folder given explicitly (ComfyUI's CLIPVisionLoader)

    @property
    def active(self) -> bool:
        return any(r.scale > 0 for r in self.references)


def prepare_ip_references(config, width: int, height: int) -> PreparedReferences | None:
    """Load a GenerateConfig's reference images and masks (None when it has no references)."""
    from loraflow.generate.control.preprocess import load_image

    if not config.reference:
        return None
    if not config.ip_adapter:
        raise ConfigError("reference: reference images need an IP-Adapter: pass --ip-adapter FOLDER_OR_FILE")
    images, masks = [], []
    for k, ref in enumerate(config.reference):
        images.append(load_image(ref.image, f"reference {k}"))
        # read as a prompt region reads it (stretched, alpha on white): a story gives a regioned
        # character's mask file to both, and they must cover the same pixels
        try:
            masks.append(region_image(ref.mask, width, height) if ref.mask else None)
        except ConfigError as e:
            raise ConfigError(f"reference {k} mask: {e}") from None
    return PreparedReferences(config.ip_adapter, tuple(config.reference), tuple(images), tuple(masks),
                              config.allow_pickle)


def ip_adapter_kwargs(slot, refs: PreparedReferences, cfg: bool, height: int, width: int) -> dict[str, Any]:
    """Pipeline arguments with the adapter attached to `slot`, for any number of images per call."""
    import torch

    embeds = slot.image_embeds(list(refs.images), cfg)
    scales = [r.scale for r in refs.references]
    if len(refs.images) == 1 and refs.masks[0] is None:
        slot.pipe.set_ip_adapter_scale(scales[0])  # diffusers' plain path: no mask
        return {"ip_adapter_image_embeds": embeds}
    from diffusers.image_processor import IPAdapterMaskProcessor
    from PIL import Image

    slot.pipe.set_ip_adapter_scale(1.0)  # each reference's scale is on its mask
    full = Image.new("L", (width, height), 255)
    masks = IPAdapterMaskProcessor().preprocess([full if m is None else m for m in refs.masks],
                                                height=height, width=width)  # (N, 1, H, W), binarised
    masks = masks.reshape(1, -1, height, width) * torch.tensor(scales).view(1, -1, 1, 1)  # (1, N, H, W)
    return {"ip_adapter_image_embeds": embeds, "cross_attention_kwargs": {"ip_adapter_masks": [masks]}}


def ip_reference_key(config) -> tuple:
    """What must match for two items to share a batch."""
    return (config.ip_adapter, tuple(r.model_dump_json() for r in config.reference))


def ip_reference_params(refs: PreparedReferences, model_label: str) -> dict[str, str]:
    """Infotext keys, one per reference, in the quoted `Label: value` list sd-webui-controlnet writes
    per unit (generate/control/infotext.py): `IP-Adapter 0: "Model: name [hash], Image: a.png, Weight: 0.6"`.
    Images are named by file name only (a server's upload paths are nobody's business)."""
    from pathlib import Path

    params = {}
    for k, ref in enumerate(refs.references):
        pairs = [("Model", model_label), ("Image", Path(ref.image).name), ("Weight", f"{ref.scale:g}")]
        if ref.mask:
            pairs.append(("Mask", Path(ref.mask).name))
        params[f"IP-Adapter {k}"] = ", ".join(f"{label}: {value}" for label, value in pairs)
    return params
