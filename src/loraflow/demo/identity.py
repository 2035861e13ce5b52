"""The demo model's identity scorer: a character is its colour and shape. The checker reads both
from the panel and compares them with the character's definition (the colour and shape words of its
description, English or Chinese; else what the checker reads from its first reference image).
1.0 = both right, 0.5 = one, 0.0 = neither: no weights, so the demo story's numbers are exact."""
from __future__ import annotations

import re

from loraflow.demo.checker import read_image
from loraflow.demo.shapes import COLOURS, SHAPES, ZH

# English as whole words ("red", not the "red" of "centred"); Chinese words as they are written
_WORD = re.compile("|".join([rf"\b{w}\b" for w in (*COLOURS, *SHAPES)] + [ZH[w] for w in (*COLOURS, *SHAPES)]))
_NAME = {**{w: w for w in (*COLOURS, *SHAPES)}, **{ZH[w]: w for w in (*COLOURS, *SHAPES)}}


def definition(character) -> tuple[str | None, str | None]:
    """(colour, shape) the character should have: the first of each its descriptions name."""
    colour = shape = None
    for text in character.descriptions():
        for word in _WORD.findall(text.lower()):
            name = _NAME[word]
            colour = colour or (name if name in COLOURS else None)
            shape = shape or (name if name in SHAPES else None)
    if (colour is None or shape is None) and character.references:
        from loraflow.images import load_rgb

        reading = read_image(load_rgb(character.references[0]))
        colour, shape = colour or reading.colour, shape or reading.shape
    return colour, shape


class DemoIdentity:
    name = "demo-checker"
    uses_anchors = False  # the definition is the description's colour and shape words

    def identity(self, images, character, anchors) -> list[float | None]:
        colour, shape = definition(character)
        wanted = [(attr, value) for attr, value in (("colour", colour), ("shape", shape)) if value]
        if not wanted:
            return [None] * len(images)
        readings = [read_image(im) for im in images]
        return [sum(getattr(r, attr) == value for attr, value in wanted) / len(wanted) for r in readings]


def identity_for(identity: str, clip: str | None, is_demo_model: bool) -> DemoIdentity | None:
    """The demo checker when the storyboard options ask for it: `identity: demo`, or `auto` on the demo
    model without a CLIP folder (the command line and the Python API both decide with this)."""
    if identity == "demo" or (identity == "auto" and not clip and is_demo_model):
        return DemoIdentity()
    return None
