"""Aspect-ratio buckets (kohya rules), crops, flips and SDXL micro-conditioning; no image dropped."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from loraflow.train.buckets import BatchPlan, Crop, assign_bucket, crop_for, make_buckets


@pytest.mark.parametrize("resolution", [64, 512, 1024])
def test_bucket_rules(resolution):
    buckets = make_buckets(resolution)
    assert (resolution, resolution) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0 and w * h <= resolution * resolution
    assert len(buckets) == len(set(buckets))
    if resolution == 1024:
        assert (1216, 832) in buckets and (832, 1216) in buckets  # SDXL's familiar landscape/portrait


def test_nearest_aspect_and_no_upscale_beyond_limit():
    buckets = make_buckets(1024)
    assert assign_bucket((2000, 1000), buckets, 2.0, 64) == (1408, 704)
    assert assign_bucket((1024, 1024), buckets, 2.0, 64) == (1024, 1024)
    small = assign_bucket((200, 100), buckets, 2.0, 64)  # 1408 wide would be a 7x upscale
    assert small == (384, 192) and small[0] / 200 <= 2.0


def test_plan_keeps_every_image_with_repeats_and_one_bucket_per_batch():
    sizes = [(64, 64), (128, 64), (64, 128), (96, 64), (200, 50)] * 5
    repeats = [1, 2, 3, 1, 1] * 5
    plan = BatchPlan(sizes, repeats, make_buckets(128), batch_size=3, seed=0, center_crop=True,
                     random_flip=True, max_upscale=2.0, step=64)
    epoch = plan.epoch(0)
    assert len(epoch) == plan.batches_per_epoch
    seen = Counter(e.item for batch in epoch for e in batch)
    assert seen == Counter({i: r for i, r in enumerate(repeats)})
    for batch in epoch:
        assert len({e.crop.bucket for e in batch}) == 1
    assert [plan.batch(m) for m in range(plan.batches_per_epoch)] == epoch
    assert plan.epoch(1) != epoch and BatchPlan(sizes, repeats, make_buckets(128), batch_size=3, seed=0,
                                                center_crop=True, random_flip=True, max_upscale=2.0,
                                                step=64).epoch(0) == epoch


def test_crop_and_time_ids():
    rng = random.Random(0)
    crop = crop_for((200, 100), (128, 64), center=True, flip=False, rng=rng)
    assert crop == Crop((128, 64), (128, 64), 0, 0, False)
    crop = crop_for((100, 100), (128, 64), center=True, flip=False, rng=rng)
    assert crop.resized == (128, 128) and crop.top == 32 and crop.left == 0
    # (original h, w), (crop top, left), (target h, w) - SDXL paper section 2.2
    assert crop.time_ids_args((100, 100)) == ((100, 100), (32, 0), (64, 128))
    wide = crop_for((300, 100), (128, 64), center=False, flip=True, rng=random.Random(1))
    # flipped: the crop's left edge is measured from the right, as kohya does
    assert wide.time_ids_args((300, 100))[1] == (0, wide.resized[0] - wide.left - 128)
