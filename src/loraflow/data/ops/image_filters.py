"""Image filters: shape, aspect ratio, file size (data-juicer semantics) and sharpness (ours).

Sources: data_juicer/ops/filter/image_{shape,aspect_ratio,size}_filter.py (py-data-juicer 1.6.1).
Shape and aspect ratio need only the header, file size needs only `stat` -- none decode pixels.
"""
from __future__ import annotations

import math

import numpy as np
from pydantic import field_validator

from loraflow.config import opt
from loraflow.data.ops.base import (MAXSIZE, MultiImageParams, Op, Rejection, SampleImages, in_range, keep_many,
                                    show_range)
from loraflow.data.text_rules import size_to_bytes


class ImageShapeParams(MultiImageParams):
    min_width: int = opt(1, "min image width in pixels")
    max_width: int = opt(MAXSIZE, "max image width in pixels")
    min_height: int = opt(1, "min image height in pixels")
    max_height: int = opt(MAXSIZE, "max image height in pixels")


class ImageShapeFilter(Op):
    name = "image_shape_filter"
    Params = ImageShapeParams
    stat_keys = ("image_width", "image_height")

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        infos = [images.info(i) for i in range(len(images))]
        stats["image_width"] = [x.width for x in infos]
        stats["image_height"] = [x.height for x in infos]

    def decide(self, stats: dict) -> Rejection | None:
        p = self.p
        oks = [in_range(p, w, p.min_width, p.max_width) and in_range(p, h, p.min_height, p.max_height)
               for w, h in zip(stats["image_width"], stats["image_height"])]
        if keep_many(p, oks):
            return None
        sizes = ", ".join(f"{w}x{h}" for w, h in zip(stats["image_width"], stats["image_height"]))
        bad_w = any(not in_range(p, w, p.min_width, p.max_width) for w in stats["image_width"])
        stat = "image_width" if bad_w else "image_height"
        return Rejection(self.name, stat, stats[stat],
                         f"{sizes}: width must be in {show_range(p.min_width, p.max_width, p)}, "
                         f"height in {show_range(p.min_height, p.max_height, p)} ({p.any_or_all})")


class ImageAspectRatioParams(MultiImageParams):
    min_ratio: float = opt(0.333, "min width/height")
    max_ratio: float = opt(3.0, "max width/height")


class ImageAspectRatioFilter(Op):
    name = "image_aspect_ratio_filter"
    Params = ImageAspectRatioParams
    stat_keys = ("aspect_ratios",)

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        infos = [images.info(i) for i in range(len(images))]
        stats["aspect_ratios"] = [x.width / x.height for x in infos]

    def decide(self, stats: dict) -> Rejection | None:
        return self.range_verdict("aspect_ratios", stats, self.p.min_ratio, self.p.max_ratio, "aspect ratio")


class ImageSizeParams(MultiImageParams):
    min_size: str | int = opt("0", "min file size, e.g. '10KB' (binary units: 1KB = 1024 bytes)")
    max_size: str | int = opt("1TB", "max file size, e.g. '1MB'")

    @field_validator("min_size", "max_size")
    @classmethod
    def _parse(cls, v):
        size_to_bytes(v)  # raises ValueError with the reason; pydantic names the key
        return v


class ImageSizeFilter(Op):
    name = "image_size_filter"
    Params = ImageSizeParams
    stat_keys = ("image_sizes",)

    def __init__(self, params, text_key, image_key):
        super().__init__(params, text_key, image_key)
        self.low, self.high = size_to_bytes(params.min_size), size_to_bytes(params.max_size)

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        stats["image_sizes"] = [images.file_size(i) for i in range(len(images))]

    def decide(self, stats: dict) -> Rejection | None:
        return self.range_verdict("image_sizes", stats, self.low, self.high, "file size (bytes)", "{}")


class ImageSharpnessParams(MultiImageParams):
    min_sharpness: float = opt(100.0, "min variance of the Laplacian (blurry images score low)")
    max_sharpness: float = opt(math.inf, "max variance of the Laplacian")
    max_side: int = opt(1024, "downscale so the longer side is at most this before measuring (0 = never)")


class ImageSharpnessFilter(Op):
    """loraflow's own: blur detection by the variance of the Laplacian (Pech-Pacheco et al.,
    "Diatom autofocusing in brightfield microscopy", ICPR 2000). No model weights."""

    name = "image_sharpness_filter"
    Params = ImageSharpnessParams
    stat_keys = ("image_sharpness",)

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        stats["image_sharpness"] = [laplacian_variance(images.rgb(i), self.p.max_side) for i in range(len(images))]

    def decide(self, stats: dict) -> Rejection | None:
        return self.range_verdict("image_sharpness", stats, self.p.min_sharpness, self.p.max_sharpness,
                                  "sharpness", "{:.1f}")


def laplacian_variance(im, max_side: int = 1024) -> float:
    gray = im.convert("L")
    if max_side and max(gray.size) > max_side:
        gray = gray.copy()
        gray.thumbnail((max_side, max_side))
    a = np.asarray(gray, dtype=np.float64)  # (H, W)
    if a.shape[0] < 3 or a.shape[1] < 3:
        return 0.0
    # 4-neighbour Laplacian on the interior: (H-2, W-2)
    lap = a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4.0 * a[1:-1, 1:-1]
    return float(lap.var())
