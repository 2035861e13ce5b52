"""Caption augmentation: kohya-style shuffle with keep_tokens, tag dropout, trigger prefix, and cached
variants that all get used (issue 17: shuffling must survive text-embedding caching)."""
from __future__ import annotations

import random
from collections import defaultdict

import pytest

from train_helpers import base_config
from loraflow.train.buckets import BatchPlan
from loraflow.train.captions import CaptionPolicy, Captions, augment, make_variants
from loraflow.train.config import TrainConfig

TAGS = ["sks", "1girl", "red hair", "smile", "outdoors", "tree", "sky"]
CAPTION = ", ".join(TAGS)


def test_shuffle_keeps_the_first_keep_tokens_tags_in_place():
    policy = CaptionPolicy(shuffle=True, keep_tokens=2)
    orders = set()
    for seed in range(50):
        tags = augment(CAPTION, policy, random.Random(seed)).split(", ")
        assert tags[:2] == TAGS[:2]
        assert sorted(tags[2:]) == sorted(TAGS[2:])  # shuffled, nothing lost
        orders.add(tuple(tags))
    assert len(orders) > 10  # it really shuffles


def test_tag_dropout_never_drops_kept_tags_and_prefix_goes_first():
    policy = CaptionPolicy(prefix="ohwx style, ", keep_tokens=1, tag_dropout=1.0)
    assert augment(CAPTION, policy, random.Random(0)) == "ohwx style, sks"
    half = CaptionPolicy(keep_tokens=1, tag_dropout=0.5)
    lengths = [len(augment(CAPTION, half, random.Random(s)).split(", ")) for s in range(200)]
    # 6 droppable tags at p=0.5: 1 + Binomial(6, 0.5) tags, mean 4
    assert min(lengths) >= 1 and 3.5 < sum(lengths) / len(lengths) < 4.5


def test_no_augmentation_is_prefix_plus_caption():
    assert augment("a red circle", CaptionPolicy(prefix="t, "), random.Random(0)) == "t, a red circle"
    assert make_variants("a, b, c", CaptionPolicy(), seed=0) == ["a, b, c"]


def _plan(n_items: int, repeats: int, batch_size: int = 2):
    return BatchPlan([(64, 64)] * n_items, [repeats] * n_items, [(64, 64)], batch_size=batch_size, seed=3,
                     center_crop=True, random_flip=False, max_upscale=2.0, step=64)


def test_cached_variants_differ_and_are_all_used_over_an_epoch():
    n, variants = 3, 4
    plan = _plan(n, repeats=variants)  # every item is seen `variants` times per epoch
    raw = [CAPTION, "a, b, c, d, e", "x, y, z, w"]
    captions = Captions(raw, CaptionPolicy(shuffle=True, keep_tokens=1, variants=variants), seed=0, plan=plan,
                        cached=True)
    for i in range(n):
        assert len(set(captions.variants[i])) == variants  # distinct texts, so distinct cache entries
    used = defaultdict(list)
    for m in range(plan.batches_per_epoch):
        for entry, text in zip(plan.batch(m), captions.for_batch(m)):
            used[entry.item].append(text)
    for i in range(n):
        assert sorted(used[i]) == sorted(captions.variants[i])  # each variant exactly once in the epoch
        assert used[i] != [used[i][0]] * variants
    assert captions.all_cached() == {v for vs in captions.variants for v in vs} | {""}


def test_variant_choice_is_a_pure_function_of_the_micro_batch():
    """What resume relies on: a fresh object asked for micro-batch m mid-run gives the same captions."""
    plan = _plan(5, repeats=3)
    policy = CaptionPolicy(shuffle=True, tag_dropout=0.2, caption_dropout=0.1, variants=3)
    first = Captions([CAPTION] * 5, policy, seed=1, plan=plan, cached=True)
    run = [first.for_batch(m) for m in range(3 * plan.batches_per_epoch)]
    for m in (7, 2, len(run) - 1):
        fresh = Captions([CAPTION] * 5, policy, seed=1, plan=_plan(5, repeats=3), cached=True)
        assert fresh.for_batch(m) == run[m]
    live = Captions([CAPTION] * 5, policy, seed=1, plan=plan, cached=False)
    assert live.all_cached() == {""}  # no text cache: nothing precomputed, fresh draws per sighting
    assert live.for_batch(4) == Captions([CAPTION] * 5, policy, seed=1, plan=plan, cached=False).for_batch(4)


def test_kohya_spellings_are_accepted():
    config = TrainConfig.from_dict({"dataset": "d", "shuffle_caption": True, "keep_tokens": 2,
                                    "caption_dropout_rate": 0.1, "caption_tag_dropout_rate": 0.2,
                                    "trigger_word": "ohwx, "})
    assert (config.shuffle_caption, config.keep_tokens, config.caption_dropout, config.tag_dropout,
            config.caption_prefix) == (True, 2, 0.1, 0.2, "ohwx, ")


def test_training_caches_every_variant(tmp_path, shapes_dataset):
    from loraflow.train.trainer import train

    # shapes captions are "a red circle": split on spaces, 3 tags -> at most 3! = 6 orders, 3 asked for
    config = base_config(tmp_path, shapes_dataset, max_steps=2, shuffle_caption=True, caption_separator=" ",
                         caption_variants=3)
    result = train(config)
    distinct_captions = {row.split(",", 1)[1] for row in
                         (shapes_dataset / "train" / "metadata.csv").read_text(encoding="utf-8-sig").splitlines()[1:]}
    # 3 variants per distinct caption (items sharing a caption share its variants) + ""
    assert result.stats["text_encode_calls"] == 3 * len(distinct_captions) + 1
