"""Op names -> classes, and the recipe's `process` list -> op objects (errors before any work)."""
from __future__ import annotations

from typing import Any

from loraflow.data.ops.base import Op
from loraflow.data.ops.dedup import ImageDeduplicator
from loraflow.data.ops.model_filters import ImageAestheticsFilter, ImageTextSimilarityFilter
from loraflow.data.ops.mappers import ImageCaptioningMapper, ImageTaggingMapper
from loraflow.data.ops.image_filters import (ImageAspectRatioFilter, ImageShapeFilter, ImageSharpnessFilter,
                                             ImageSizeFilter)
from loraflow.data.ops.text_filters import TextLengthFilter, WordsNumFilter
from loraflow.errors import ConfigError

OPS: dict[str, type[Op]] = {cls.name: cls for cls in (
    ImageShapeFilter, ImageAspectRatioFilter, ImageSizeFilter, ImageSharpnessFilter,
    ImageDeduplicator, TextLengthFilter, WordsNumFilter, ImageAestheticsFilter, ImageTextSimilarityFilter,
    ImageCaptioningMapper, ImageTaggingMapper,
)}
# The model path each model-backed op needs (local weights; checked before any work starts).
REQUIRED_MODEL = {"image_aesthetics_filter": "hf_scorer_model", "image_text_similarity_filter": "hf_clip",
                  "image_captioning_mapper": "hf_img2seq", "image_tagging_mapper": "tagger_model"}

# data-juicer ops that need model weights (CLIP, BLIP, NSFW/watermark classifiers, tokenizers ...).
MODEL_BACKED = frozenset({
    "image_text_matching_filter",
    "image_nsfw_filter", "image_watermark_filter", "image_face_count_filter", "image_face_ratio_filter",
    "image_pair_similarity_filter", "image_subplot_filter",
    "image_diffusion_mapper", "image_face_blur_mapper", "perplexity_filter",
    "language_id_score_filter", "token_num_filter", "llm_quality_score_filter", "ray_image_deduplicator",
})


def build_op(name: str, params: dict[str, Any] | None, text_key: str, image_key: str, where: str) -> Op:
    if name in MODEL_BACKED:
        raise ConfigError(f"{where}: data-juicer op '{name}' is not available in loraflow yet; needs model weights")
    if name not in OPS:
        raise ConfigError(f"{where}: unknown op '{name}'; loraflow knows: {', '.join(sorted(OPS))}")
    cls = OPS[name]
    parsed = cls.Params.from_dict(params or {}, source=f"{where} ({name})")
    if getattr(parsed, "tokenization", False):
        raise ConfigError(f"{where} ({name}): tokenization: true is not available in loraflow yet; "
                          "needs a sentencepiece model")
    key = REQUIRED_MODEL.get(name)
    if key and not getattr(parsed, key):
        raise ConfigError(f"{where} ({name}): {key} is required: the path of local model weights "
                          "(loraflow never downloads during a run)")
    try:  # mappers check their weights folder here, before any work
        return cls(parsed, text_key=text_key, image_key=image_key)
    except ConfigError as e:
        raise ConfigError(f"{where} ({name}): {e}") from None
