"""Identity scores: does a panel still show the same character? The scorer is pluggable: anything
with `name` and `identity(images, character, anchors)` fits (`IdentityScorer`).

`ClipIdentity` is the cosine of CLIP image embeddings between a panel and the character's anchors
(its reference images, or the first panel it appeared in), averaged over the anchors: the image
similarity DreamBooth (Ruiz et al. 2023, section 4.1, "CLIP-I") uses to measure subject fidelity.
The demo model's scorer reads colour and shape instead (`loraflow.demo.identity`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL import Image

    from loraflow.generate.cast import Character
    from loraflow.score.clip import ClipEncoder


class IdentityScorer(Protocol):
    name: str
    uses_anchors: bool  # False: the scorer knows each character's definition and ignores anchors

    def identity(self, images: Sequence[Image.Image], character: Character,
                 anchors: Sequence[Image.Image] | None) -> list[float | None]:
        """One score per image, about 0 (someone else) to 1 (the same); None where it cannot tell.
        `anchors` is None on the first panel a character without references appears in."""
        ...


class ClipIdentity:
    """CLIP-I: mean cosine of the panel's image embedding with each anchor's, in [-1, 1]."""

    name = "clip"
    uses_anchors = True

    def __init__(self, encoder: ClipEncoder):
        self.encoder = encoder

    def identity(self, images, character, anchors) -> list[float | None]:
        if not anchors:
            return [None] * len(images)
        panels = self.encoder.image_embeddings(list(images))  # (N, D), L2-normalised
        refs = self.encoder.image_embeddings(list(anchors))  # (A, D)
        return (panels @ refs.T).mean(dim=1).tolist()
