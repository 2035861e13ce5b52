"""The demo data set and its checker: deterministic, held-out pairs never trained on, and the checker
reads the generator's own pictures correctly (it is the ruler for the demo model's accuracy)."""
from __future__ import annotations

import random

import pytest

from loraflow.demo.checker import accuracy, read_image
from loraflow.demo.dataset import held_out_scenes, write_dataset
from loraflow.demo.shapes import Scene, all_scenes, draw_scene, split_held_out


@pytest.mark.parametrize("style", ["plain", "striped"])
def test_checker_reads_ground_truth(style):
    rng = random.Random(1)
    pairs = [(draw_scene(s, 64, jitter=0.06, rng=rng), s) for s in all_scenes(style)]
    acc = accuracy(pairs)
    assert acc["colour"] == 1.0 and acc["shape"] >= 0.99 and acc["position"] >= 0.97 and acc["background"] == 1.0


def test_stripe_score_separates_the_styles():
    plain = read_image(draw_scene(Scene("blue", "square", "center", "white"), 64)).stripes
    striped = read_image(draw_scene(Scene("blue", "square", "center", "white", "striped"), 64)).stripes
    assert plain < 0.05 < 0.2 < striped


def test_empty_picture_reads_as_nothing():
    from PIL import Image

    reading = read_image(Image.new("RGB", (64, 64), (245, 245, 245)))
    assert reading.colour is None and reading.shape is None and reading.background == "white"


def test_held_out_pairs_are_disjoint_and_fixed():
    train, held = split_held_out(all_scenes())
    assert held and {(s.colour, s.shape) for s in train}.isdisjoint({(s.colour, s.shape) for s in held})
    assert held == held_out_scenes()


def test_captions_in_both_languages():
    scene = Scene("red", "star", "left", "black", "striped")
    assert scene.caption("en") == "a red striped star on the left, black background"
    assert scene.caption("zh") == "黑色背景,左边有一个红色的条纹星形"


def test_dataset_is_deterministic_and_readable_by_the_trainer(tmp_path):
    from loraflow.data.training_manifest import read_training_items

    a = write_dataset(tmp_path / "a", n=12, seed=3)
    b = write_dataset(tmp_path / "b", n=12, seed=3)
    items = read_training_items(a)
    assert len(items) == 12
    assert [i.caption.startswith("a ") for i in items] == [k % 2 == 0 for k in range(12)]  # en, zh, en, ...
    held = {(s.colour, s.shape) for s in held_out_scenes()}
    assert (a / "train" / "metadata.csv").read_bytes() == (b / "train" / "metadata.csv").read_bytes()
    assert (a / "train" / "000005.png").read_bytes() == (b / "train" / "000005.png").read_bytes()
    english = [i.caption for i in items if i.caption.startswith("a ")]
    assert all((c.split()[1], c.split()[2]) not in held for c in english)


def test_eval_runs_on_a_model(tiny_session):
    from loraflow.demo.evaluate import evaluate

    scores = evaluate(tiny_session("sdxl"), n=3, steps=1)
    assert scores["n"] == 3 and all(0.0 <= scores[k] <= 1.0 for k in ("colour", "shape", "position", "background"))
