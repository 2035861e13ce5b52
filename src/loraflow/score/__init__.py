"""Aesthetic score and CLIP score of pictures, from local weights.

    scorer = Scorer.load(clip="models/clip-vit-large-patch14",
                         aesthetic="models/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE")
    scorer.score([image], ["a cat"])  # [ImageScore(aesthetic=6.1, clip=31.2)]

The package is also called: `loraflow.score(images, **options)` is `loraflow.score.api.score`.
Importing this package is light: torch and transformers are imported when a model is loaded.
"""
from loraflow import callable_package
from loraflow.score.scorer import ImageScore, Scorer, reduce_scores

__all__ = ["ImageScore", "Scorer", "reduce_scores"]

callable_package(__name__, "loraflow.score.api", "score")
