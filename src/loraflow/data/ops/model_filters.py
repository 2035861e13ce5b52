"""data-juicer's model-backed image filters, on loraflow's scorer (local weights only).

Sources: data_juicer/ops/filter/image_aesthetics_filter.py and image_text_similarity_filter.py
(py-data-juicer 1.6.1): same names, parameters, stat keys and scales:
* `image_aesthetics_scores` = predictor score / 10 (so `min_score: 0.5` means a rating of 5),
* `image_text_similarity` = CLIP cosine of image and text (ours is clamped at 0, as CLIPScore).

These ops run batched in the main process (`kind = "model"`: one model in memory, on the GPU
when there is one) instead of once per worker process.
"""
from __future__ import annotations

from typing import Any, ClassVar, Literal

from loraflow.config import opt
from loraflow.images import ImageError
from loraflow.data.ops.base import MultiImageParams, Op, SampleError, SampleImages
from loraflow.data.text_rules import strip_special_tokens
from loraflow.score import Scorer, reduce_scores



class ModelOp(Op):
    """A filter whose stats come from a model, computed for a whole chunk of samples at once."""

    kind: ClassVar[str] = "model"

    def __init__(self, params, text_key: str, image_key: str):
        super().__init__(params, text_key, image_key)
        self._scorer = None

    def __getstate__(self) -> dict[str, Any]:  # workers (Ray) load their own model
        return {**self.__dict__, "_scorer": None}

    @property
    def scorer(self):
        if self._scorer is None:
            self._scorer = Scorer.load(**self.scorer_paths(), device=self.p.device)
        return self._scorer

    def scorer_paths(self) -> dict[str, str | None]:
        """Keyword arguments of `Scorer.load` (the local weights this op reads)."""
        raise NotImplementedError


def _decode_all(items: list[tuple[SampleImages, dict, dict]], errors: list[str | None] | None = None):
    """RGB images of every sample (flattened) and a per-sample error (unreadable image, or an
    error already known from `errors`)."""
    known = errors or [None] * len(items)
    flat, errors = [], []
    for (images, _, _), error in zip(items, known):
        if error is not None:
            errors.append(error)
            continue
        try:
            decoded = [images.rgb(i) for i in range(len(images))]
        except ImageError as e:
            errors.append(str(e))
            continue
        errors.append(None)
        flat.extend(decoded)
    return flat, errors


class AestheticsParams(MultiImageParams):
    hf_scorer_model: str = opt("", "aesthetic predictor: a local simple-aesthetics-predictor folder or head file")
    clip_model: str | None = opt(None, "loraflow: CLIP ViT-L/14 folder for a bare head file (not needed for a folder)")
    trust_remote_code: bool = opt(False, "ignored: loraflow never runs code from model folders")
    min_score: float = opt(0.5, "min aesthetic score / 10")
    max_score: float = opt(1.0, "max aesthetic score / 10")
    device: str = opt("auto", "loraflow: cpu, cuda or auto")


class ImageAestheticsFilter(ModelOp):
    name = "image_aesthetics_filter"
    Params = AestheticsParams
    stat_keys = ("image_aesthetics_scores",)

    def scorer_paths(self):
        if not self.p.hf_scorer_model:
            raise SampleError("image_aesthetics_filter needs hf_scorer_model: a local aesthetic predictor path")
        return {"aesthetic": self.p.hf_scorer_model, "clip": self.p.clip_model}

    def compute_batch(self, items):
        flat, errors = _decode_all(items)
        scores = iter(self.scorer.score(flat) if flat else [])
        for (images, _, stats), error in zip(items, errors):
            if error is None:
                stats["image_aesthetics_scores"] = [next(scores).aesthetic / 10.0 for _ in range(len(images))]
        return errors

    def decide(self, stats):
        return self.range_verdict("image_aesthetics_scores", stats, self.p.min_score, self.p.max_score,
                                  "aesthetic score/10")


class TextSimilarityParams(MultiImageParams):
    hf_clip: str = opt("", "CLIP model: a local transformers folder (e.g. of openai/clip-vit-base-patch32)")
    trust_remote_code: bool = opt(False, "ignored: loraflow never runs code from model folders")
    min_score: float = opt(0.1, "min image-text cosine similarity")
    max_score: float = opt(1.0, "max image-text cosine similarity")
    horizontal_flip: bool = opt(False, "mirror images left-right before scoring")
    vertical_flip: bool = opt(False, "mirror images top-bottom before scoring")
    reduce_mode: Literal["avg", "max", "min"] = opt("avg", "how the images of one text chunk are reduced")
    device: str = opt("auto", "loraflow: cpu, cuda or auto")


class ImageTextSimilarityFilter(ModelOp):
    """One text chunk per sample (special tokens removed); its images' similarities are reduced
    with `reduce_mode` into one value, as data-juicer does for each chunk."""

    name = "image_text_similarity_filter"
    Params = TextSimilarityParams
    stat_keys = ("image_text_similarity",)

    def scorer_paths(self):
        if not self.p.hf_clip:
            raise SampleError("image_text_similarity_filter needs hf_clip: a local CLIP folder")
        return {"clip": self.p.hf_clip, "aesthetic": None}

    def compute_batch(self, items):
        texts, text_errors = [], []
        for _, sample, _ in items:
            try:
                text = self.text_of(sample)
            except SampleError as e:
                texts.append("")
                text_errors.append(str(e))
                continue
            texts.append(strip_special_tokens(text))
            text_errors.append(None)
        flat, errors = _decode_all(items, text_errors)
        prompts = [t for (images, _, _), t, e in zip(items, texts, errors) if e is None for _ in range(len(images))]
        scores = iter(self.scorer.score(flat, prompts, horizontal_flip=self.p.horizontal_flip,
                                        vertical_flip=self.p.vertical_flip) if flat else [])
        for (images, _, stats), error in zip(items, errors):
            if error is None:
                values = [next(scores).clip / 100.0 for _ in range(len(images))]
                stats["image_text_similarity"] = [reduce_scores(values, self.p.reduce_mode)] if values else []
        return errors

    def decide(self, stats):
        return self.range_verdict("image_text_similarity", stats, self.p.min_score, self.p.max_score,
                                  "image-text similarity")
