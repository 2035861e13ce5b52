"""One ControlNet "unit" (A1111's word): which preprocessor, which reference image, how strong,
over which part of the denoising, through which ControlNet weights.

On the command line a unit is `TYPE:IMAGE[:SCALE[:START:END]]` (`--control canny:ref.png:0.8`);
in config and story files it may also be a mapping `{type: canny, image: ref.png, scale: 0.8}`.
"""
from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from loraflow.config import Options, opt
from loraflow.errors import ConfigError

ControlType = Literal["canny", "lineart", "depth", "pose", "seg", "tile", "color", "raw"]
CONTROL_TYPES: tuple[str, ...] = ControlType.__args__  # type: ignore[attr-defined]
PREVIOUS = "@previous"  # storyboards: the previous scene's output image


class ControlUnit(Options):
    type: ControlType = opt(..., "preprocessor: canny, lineart, tile, color (built in); depth, pose, seg, raw "
                                 "(the image already is the control map, unless an annotator is given)")
    image: str = opt(..., f"reference image file; in a story also {PREVIOUS}")
    scale: float = opt(1.0, "controlnet_conditioning_scale: how strongly it steers (A1111 Weight)",
                       aliases=("weight", "controlnet_conditioning_scale"), ge=0.0)
    start: float = opt(0.0, "fraction of the steps after which it starts (A1111 Guidance Start)",
                       aliases=("control_guidance_start", "guidance_start"), ge=0.0, le=1.0)
    end: float = opt(1.0, "fraction of the steps after which it stops (A1111 Guidance End)",
                     aliases=("control_guidance_end", "guidance_end"), ge=0.0, le=1.0)
    model: str | None = opt(None, "ControlNet weights: diffusers folder or .safetensors (else --controlnet)",
                            aliases=("controlnet",))

    @model_validator(mode="after")
    def _window(self):
        if self.start >= self.end:
            raise ValueError(f"start ({self.start:g}) must be below end ({self.end:g})")
        return self

    @classmethod
    def parse(cls, value) -> "ControlUnit":
        """A `ControlUnit`, a mapping, or the `TYPE:IMAGE[:SCALE[:START:END]]` text."""
        return cls.from_value(value, "control", "TYPE:IMAGE[:SCALE[:START:END]]", parse_control_arg)


def parse_units(value) -> list[ControlUnit]:
    """A field value (one unit or a list of them, as text or mappings) -> fresh ControlUnit copies."""
    items = [value] if isinstance(value, (str, dict, ControlUnit)) else value
    if not isinstance(items, list):
        raise ConfigError(f"control: expected a list of units, got {type(value).__name__}")
    return [ControlUnit.parse(item).model_copy() for item in items]


def parse_control_arg(text: str) -> ControlUnit:
    """`canny:ref.png`, `depth:d.png:0.6`, `pose:p.png:1:0:0.5`; a path may hold colons (C:\\x.png)."""
    usage = f"--control {text!r}: expected TYPE:IMAGE[:SCALE[:START:END]] with TYPE one of {', '.join(CONTROL_TYPES)}"
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(usage)
    parts = rest.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    if len(numbers) == 2:
        raise ConfigError(f"{usage} (got two numbers: give SCALE, or SCALE:START:END)")
    fields = dict(zip(("scale", "start", "end"), numbers))
    return ControlUnit.from_dict({"type": kind.strip().lower(), "image": ":".join(parts), **fields},
                                 source=f"--control {text!r}")
