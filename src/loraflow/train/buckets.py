"""Aspect-ratio buckets and the order images are seen in.

Buckets follow kohya sd-scripts (`library/model_util.py::make_bucket_resolutions`): sides are
multiples of `step`, area <= resolution^2; each image goes to the bucket with the nearest aspect
ratio and is resized to cover it, then cropped. No image is thrown away: one that would need
more than `max_upscale` to cover its bucket gets a smaller bucket of its own instead.

The order is a pure function of (seed, epoch), so a resumed run sees exactly the batches the
uninterrupted run would have seen: micro-batch m of the whole run is `plan(m // n)[m % n]`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

Bucket = tuple[int, int]  # (width, height) in pixels


def make_buckets(resolution: int, step: int = 64) -> list[Bucket]:
    """kohya's bucket set: the square, plus every (w, h) with w*h <= resolution^2 and
    sides in [max(step, resolution/4), 2*resolution]."""
    max_area = resolution * resolution
    min_side, max_side = max(step, resolution // 4 // step * step), 2 * resolution
    square = int(math.sqrt(max_area) // step) * step
    buckets = {(square, square)}
    for width in range(min_side, max_side + 1, step):
        height = min(max_side, (max_area // width) // step * step)
        if height >= min_side:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def assign_bucket(size: tuple[int, int], buckets: list[Bucket], max_upscale: float, step: int) -> Bucket:
    """Bucket of an image of `size` (w, h): nearest aspect ratio, unless filling it would upscale
    the image by more than `max_upscale` (then a bucket of its own, like kohya's `bucket_no_upscale`)."""
    w, h = size
    ratio = w / h
    best = min(buckets, key=lambda b: (abs(b[0] / b[1] - ratio), -b[0] * b[1]))
    if max(best[0] / w, best[1] / h) <= max_upscale:
        return best
    own_w = max(step, int(w * max_upscale) // step * step)
    own_h = max(step, int(h * max_upscale) // step * step)
    return own_w, own_h


@dataclass(frozen=True)
class Crop:
    """Where an image lands in its bucket; also the SDXL micro-conditioning (SDXL paper 2.2)."""

    bucket: Bucket  # (w, h) of the training crop
    resized: tuple[int, int]  # (w, h) after resizing to cover the bucket
    left: int  # crop offset in the resized image
    top: int
    flip: bool

    def time_ids_args(self, original_size: tuple[int, int]):
        """(original (h, w), crop top-left (top, left), target (h, w)). A flipped image's crop is
        measured from the right edge, as kohya does (`train_util.py`, `flip_aug`)."""
        left = self.resized[0] - self.left - self.bucket[0] if self.flip else self.left
        return (original_size[1], original_size[0]), (self.top, left), (self.bucket[1], self.bucket[0])


def crop_for(size: tuple[int, int], bucket: Bucket, center: bool, flip: bool, rng: random.Random) -> Crop:
    w, h = size
    scale = max(bucket[0] / w, bucket[1] / h)
    resized = (max(bucket[0], round(w * scale)), max(bucket[1], round(h * scale)))
    spare_w, spare_h = resized[0] - bucket[0], resized[1] - bucket[1]
    if center:
        left, top = spare_w // 2, spare_h // 2
    else:
        left, top = rng.randint(0, spare_w), rng.randint(0, spare_h)
    return Crop(bucket, resized, left, top, flip)


@dataclass(frozen=True)
class Entry:
    item: int  # index into the item list
    crop: Crop


class BatchPlan:
    """Batches of one bucket each, reshuffled every epoch; `batch(m)` is micro-batch m of the run."""

    def __init__(self, sizes: list[tuple[int, int]], repeats: list[int], buckets: list[Bucket], *, batch_size: int,
                 seed: int, center_crop: bool, random_flip: bool, max_upscale: float, step: int):
        self.sizes, self.repeats, self.batch_size, self.seed = sizes, repeats, batch_size, seed
        self.center_crop, self.random_flip = center_crop, random_flip
        self.item_buckets = [assign_bucket(s, buckets, max_upscale, step) for s in sizes]
        groups: dict[Bucket, int] = {}
        for bucket, r in zip(self.item_buckets, repeats):
            groups[bucket] = groups.get(bucket, 0) + r
        # partial last batch of each bucket is kept: no image is dropped
        self.batches_per_epoch = sum(math.ceil(n / batch_size) for n in groups.values())
        self._cached: tuple[int, list[list[Entry]]] | None = None

    def epoch(self, epoch: int) -> list[list[Entry]]:
        if self._cached and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(f"{self.seed}:{epoch}")
        groups: dict[Bucket, list[int]] = {}
        for i, (bucket, r) in enumerate(zip(self.item_buckets, self.repeats)):
            groups.setdefault(bucket, []).extend([i] * r)
        batches: list[list[Entry]] = []
        for bucket in sorted(groups):
            members = groups[bucket]
            rng.shuffle(members)
            for start in range(0, len(members), self.batch_size):
                batches.append([self._entry(i, bucket, rng) for i in members[start:start + self.batch_size]])
        rng.shuffle(batches)
        self._cached = (epoch, batches)
        return batches

    def _entry(self, i: int, bucket: Bucket, rng: random.Random) -> Entry:
        flip = self.random_flip and rng.random() < 0.5
        return Entry(i, crop_for(self.sizes[i], bucket, self.center_crop, flip, rng))

    def batch(self, m: int) -> list[Entry]:
        return self.epoch(m // self.batches_per_epoch)[m % self.batches_per_epoch]
