"""`Scorer`: load CLIP and an aesthetic predictor once, then score PIL images (with prompts).

Built for the callers that rank or filter pictures: `loraflow score`, storyboard best-of-N,
data filters (data-juicer's `image_aesthetics_filter` / `image_text_similarity_filter`) and
training validation. When the aesthetic head reads the same CLIP as the CLIP score, each image
is embedded once.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from loraflow.errors import ConfigError, InputError

if TYPE_CHECKING:
    from PIL import Image

    from loraflow.score.aesthetic import AestheticPredictor
    from loraflow.score.clip import ClipEncoder

ReduceMode = Literal["avg", "max", "min"]
NOTHING_TO_SCORE = "nothing to score with: pass a CLIP folder (--clip) and/or an aesthetic model (--aesthetic)"


@dataclass(frozen=True)
class ImageScore:
    aesthetic: float | None  # LAION aesthetic rating, ~1-10 (None: no aesthetic model)
    clip: float | None  # CLIPScore 100 x max(cos, 0), in [0, 100] (None: no CLIP or no prompt)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


class Scorer:
    """Aesthetic score and/or CLIP score for batches of images; either model may be absent."""

    def __init__(self, clip: ClipEncoder | None = None, aesthetic: AestheticPredictor | None = None):
        if clip is None and aesthetic is None:
            raise ConfigError(NOTHING_TO_SCORE)
        self.clip = clip
        self.aesthetic = aesthetic

    @classmethod
    def load(cls, clip: str | None = None, aesthetic: str | None = None, device: str | None = "auto",
             dtype: str = "auto", allow_pickle: bool = False, batch_size: int = 16) -> Scorer:
        """From paths: `clip` a transformers CLIP folder, `aesthetic` a predictor folder or head file."""
        from loraflow.score.aesthetic import load_aesthetic
        from loraflow.score.clip import load_clip

        if clip is None and aesthetic is None:
            raise ConfigError(NOTHING_TO_SCORE)
        encoder = load_clip(clip, device, dtype, allow_pickle, batch_size) if clip else None
        predictor = load_aesthetic(aesthetic, encoder, device, dtype, allow_pickle, batch_size) if aesthetic else None
        return cls(encoder, predictor)

    def score(self, images: Sequence[Image.Image], prompts: Sequence[str | None] | None = None, *,
              horizontal_flip: bool = False, vertical_flip: bool = False) -> list[ImageScore]:
        """One `ImageScore` per image. `prompts[i]` (None/"" = no prompt) pairs with `images[i]`.

        `horizontal_flip` / `vertical_flip` mirror each image before scoring, as data-juicer's
        `image_text_similarity_filter` does; to average over views, score each view and
        `reduce_scores` the results.
        """
        images = list(images)
        if prompts is not None and len(prompts) != len(images):
            raise InputError(f"{len(images)} images but {len(prompts)} prompts")
        if not images:
            return []
        images = [_flipped(im, horizontal_flip, vertical_flip) for im in images]
        aesthetic: list[float | None] = [None] * len(images)
        clip: list[float | None] = [None] * len(images)

        # 1. image embeddings from the scorer's CLIP, shared by the aesthetic head when it reads them
        embeds = None
        with_prompt = [i for i, p in enumerate(prompts or []) if p]
        if self.clip is not None and (with_prompt or self._head_reads_clip):
            embeds = self.clip.image_embeddings(images)  # (N, D)

        # 2. aesthetic score
        if self.aesthetic is not None:
            aesthetic = (self.aesthetic.scores_from_embeddings(embeds) if self._head_reads_clip
                         else self.aesthetic.aesthetic_scores(images))

        # 3. CLIP score for the images that have a prompt
        if self.clip is not None and with_prompt:
            from loraflow.score.clip import clip_score_from_embeddings

            texts = self.clip.text_embeddings([prompts[i] for i in with_prompt])
            for i, value in zip(with_prompt, clip_score_from_embeddings(embeds[with_prompt], texts)):
                clip[i] = value
        return [ImageScore(a, c) for a, c in zip(aesthetic, clip)]

    @property
    def _head_reads_clip(self) -> bool:
        return self.aesthetic is not None and self.aesthetic.encoder is self.clip


def _flipped(image: Image.Image, horizontal: bool, vertical: bool) -> Image.Image:
    from PIL import ImageOps

    if horizontal:
        image = ImageOps.mirror(image)
    if vertical:
        image = ImageOps.flip(image)
    return image


def reduce_scores(values: Sequence[float | None], mode: ReduceMode = "avg") -> float | None:
    """Mean/max/min of the values that are not None (data-juicer's `reduce_mode`); None if none."""
    present = [v for v in values if v is not None]
    if mode not in ("avg", "max", "min"):
        raise ConfigError(f"reduce_mode '{mode}' is not one of: avg, max, min")
    if not present:
        return None
    return {"avg": sum(present) / len(present), "max": max(present), "min": min(present)}[mode]
