"""Semantic checks on the committed demo model (loraflow's own SDXL-family shapes model): pictures
follow the prompt — colour, shape, position, background — in English and Chinese, including
colour/shape pairs it never saw; it is what every command uses without --model; the demo LoRA
(examples/loras/demo-striped.safetensors, made by the README's quick start command) adds stripes at
weight 1 and nothing at weight 0. Fast: the model draws 64 px pictures in a few steps."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from loraflow.demo.checker import read_image
from loraflow.demo.dataset import held_out_scenes
from loraflow.demo.shapes import all_scenes, split_held_out
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import GenerationSession

ROOT = Path(__file__).resolve().parents[2]
DEMO_LORA = ROOT / "examples" / "loras" / "demo-striped.safetensors"
STEPS = 12


@pytest.fixture(scope="module")
def session():
    import torch

    torch.set_num_threads(2)
    return GenerationSession.from_options(GenerateConfig(device="cpu"))  # no model: the demo model


def _draw(session, scenes, lang="en", lora=(), seed=0):
    items = [GenerateConfig(prompt=s.caption(lang), steps=STEPS, seed=seed + i, lora=list(lora))
             for i, s in enumerate(scenes)]
    return [r.image for r in session.generate_many(items, batch_size=len(items))]


def _score(images, scenes, key):
    return sum(read_image(im).matches(s)[key] for im, s in zip(images, scenes)) / len(scenes)


def test_no_model_means_the_demo_model(session):
    assert session.loaded.name == "loraflow-demo" and session.loaded.source == "demo"
    assert session.family.name == "sdxl" and type(session.pipe).__name__ == "StableDiffusionXLPipeline"
    assert (session.loaded.defaults.height, session.loaded.defaults.width) == (64, 64)
    result = session.generate(GenerateConfig(prompt="a red circle in the center, white background", steps=2, seed=0))[0]
    assert result.image.size == (64, 64) and "Model: loraflow-demo" in result.infotext


def test_trained_pairs_follow_the_prompt(session):
    scenes = random.Random(3).sample(split_held_out(all_scenes())[0], 8)
    images = _draw(session, scenes)
    for key, floor in (("colour", 0.75), ("shape", 0.75), ("position", 0.75), ("background", 0.75)):
        assert _score(images, scenes, key) >= floor, key


def test_held_out_pairs_and_chinese_prompts(session):
    scenes = random.Random(4).sample(held_out_scenes(), 8)
    for lang in ("en", "zh"):
        images = _draw(session, scenes, lang)
        assert _score(images, scenes, "colour") >= 0.75, lang  # measured 1.0 and 1.0 (en, zh)
        assert _score(images, scenes, "shape") >= 0.75, lang


def test_striped_lora_adds_stripes_and_weight_zero_changes_nothing(session):
    scenes = random.Random(5).sample(all_scenes(), 6)
    base = _draw(session, scenes)
    zero = _draw(session, scenes, lora=[f"{DEMO_LORA}:0"])
    full = _draw(session, scenes, lora=[f"{DEMO_LORA}:1"])
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(base, zero))
    stripes = [float(np.mean([read_image(im).stripes for im in images])) for images in (base, full)]
    assert stripes[0] < 0.03 and stripes[1] > stripes[0] + 0.05 and stripes[1] > 5 * stripes[0], stripes  # 0.01 -> 0.11
