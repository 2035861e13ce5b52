"""Regional prompts: a prompt that acts only in one part of the picture ("attention couple").

    loraflow generate --prompt "a kitten and a puppy in a garden" \
        --region "left:an orange kitten, garden" --region "right:a brown puppy, garden"
    scenes: [{prompt: "in a garden", cast: [kitten, puppy], regions: {kitten: left, puppy: right}}]

A region is `left`, `right`, `top`, `bottom`, `full` or a mask image (white = the region, grey = a
partial share; decoded by `loraflow.images`, stretched to the picture). The picture's prompt is the
*base*: it draws wherever no region covers. How the UNet's cross-attention mixes them is in
`regional_attention.py`; this module is the torch-free part (options, checks, masks as arrays).
"""
from __future__ import annotations

from pydantic import field_validator

from loraflow.config import Options, opt
from loraflow.errors import ConfigError
from loraflow.images import ImageError, read_info

AREAS = ("left", "right", "top", "bottom", "full")
# Each region adds one cross-attention call per layer and step; a bound keeps a request's cost bounded
# (Regional Prompter's layouts rarely pass four).
MAX_REGIONS = 8


class RegionPrompt(Options):
    """One region of a picture and the prompt that draws there (A1111 Regional Prompter's region)."""

    region: str = opt(..., f"{', '.join(AREAS)}, or a mask image (white = the region)", min_length=1)
    prompt: str = opt(..., "what to draw in the region; the picture's prompt draws where no region covers")

    @field_validator("region")
    @classmethod
    def _known_region(cls, v: str) -> str:
        problem = region_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @classmethod
    def parse(cls, value) -> "RegionPrompt":
        """A `RegionPrompt`, a mapping, or the `REGION:PROMPT` text (split at the first colon, so a
        prompt may hold A1111 weights such as `(red:1.2)`)."""
        def text(value: str):
            region, colon, prompt = value.partition(":")
            return cls.from_dict({"region": region.strip(), "prompt": prompt.strip()}, source="region") if colon else None

        return cls.from_value(value, "region", f"REGION:PROMPT (REGION: {', '.join(AREAS)} or a mask image)", text)


def parse_regions(value) -> list[RegionPrompt]:
    """A field value (one region or a list, as text or mappings) -> RegionPrompts."""
    items = [value] if isinstance(value, (str, dict, RegionPrompt)) else value
    if not isinstance(items, list):
        raise ConfigError(f"regions: expected a list of REGION:PROMPT, got {type(value).__name__}")
    return [RegionPrompt.parse(item) for item in items]


def region_problem(region: str) -> str | None:
    """What is wrong with a region's name, or None. A value with a dot or a folder in it is a mask
    file; it is not read here (validating a request must not touch a file before the server's path
    policy has placed it: `mask_problem` reads it once it may)."""
    if region in AREAS or is_mask_file(region):
        return None
    return f"unknown region '{region}'; use {', '.join(AREAS)} or a mask image file"


def is_mask_file(region: str) -> bool:
    return region not in AREAS and any(c in region for c in "./\\")


def mask_problem(region: str) -> str | None:
    """What is wrong with a mask image file (its header is read), or None for an area name."""
    if not is_mask_file(region):
        return None
    try:
        read_info(region)
    except ImageError as e:
        return f"mask image {e}"
    return None


def region_masks(regions: list[str], height: int, width: int):
    """(R, height, width) float32 coverage in [0, 1] per region, on a grid of `height` x `width` cells
    (the latent grid). A half-plane covers each cell by the fraction of it on its side, so an odd
    width splits the middle column half and half; a mask image is averaged over each cell (box filter)."""
    import numpy as np

    out = np.zeros((len(regions), height, width), np.float32)
    xs = np.clip(width / 2 - np.arange(width), 0, 1)[None, :]  # share of each column left of the middle
    ys = np.clip(height / 2 - np.arange(height), 0, 1)[:, None]
    for k, region in enumerate(regions):
        if region == "full":
            out[k] = 1.0
        elif region in ("left", "right"):
            out[k] = np.broadcast_to(xs if region == "left" else 1 - xs, (height, width))
        elif region in ("top", "bottom"):
            out[k] = np.broadcast_to(ys if region == "top" else 1 - ys, (height, width))
        else:
            out[k] = _mask_image(region, height, width)
    return out


def region_image(region: str, width: int, height: int):
    """A region as a PIL "L" mask at the picture's size, white = inside (what IP-Adapter masks take)."""
    import numpy as np
    from PIL import Image

    cover = region_masks([region], height, width)[0]
    return Image.fromarray((cover * 255).round().astype(np.uint8), "L")


def _mask_image(path: str, height: int, width: int):
    import numpy as np
    from PIL import Image

    from loraflow.images import load_rgb

    try:
        grey = load_rgb(path).convert("L")  # transparency is composited on white: a transparent mask covers
    except ImageError as e:
        raise ConfigError(f"region mask image {e}") from None
    # the box average in float ("F"): 8-bit resizing would round a half-covered cell to 128/255
    return np.asarray(grey.convert("F").resize((width, height), Image.BOX), np.float32) / 255.0
