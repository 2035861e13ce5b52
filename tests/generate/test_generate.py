"""Generation invariants on tiny models: seeds, negative prompts, batching, infotext in the PNG."""
from __future__ import annotations

import numpy as np
import pytest

from loraflow.generate.infotext import parse_infotext, read_infotext
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import save_results

FAMILIES = ("sd15", "sdxl", "kolors")
SEED_NEGATIVE = "(lowres, low quality, worst quality:1.2), (text:1.2), deformed, black and white, disfigured, low contrast, cropped, missing fingers"


def config(family, **kw):
    base = dict(model=f"tiny:{family}", prompt="a cute orange cat chasing a red ball", steps=2,
                height=64, width=64, seed=7, guidance_scale=4.0)
    base.update(kw)
    return GenerateConfig(**base)


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_image_and_right_size(tiny_session, family):
    s = tiny_session(family)
    a = s.generate(config(family))[0]
    b = s.generate(config(family))[0]
    assert a.image.size == (64, 64)
    assert np.array_equal(pixels(a), pixels(b))


@pytest.mark.parametrize("family", FAMILIES)
def test_different_seed_or_negative_prompt_changes_image(tiny_session, family):
    s = tiny_session(family)
    base = pixels(s.generate(config(family))[0])
    other_seed = pixels(s.generate(config(family, seed=8))[0])
    other_negative = pixels(s.generate(config(family, negative_prompt=SEED_NEGATIVE))[0])
    assert np.abs(base - other_seed).max() > 0
    assert np.abs(base - other_negative).max() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_equals_one_by_one(tiny_session, family):
    s = tiny_session(family)
    batch = s.generate(config(family, num_images=3, batch_size=3))
    single = [s.generate(config(family, seed=7 + i))[0] for i in range(3)]
    assert [r.seed for r in batch] == [7, 8, 9]
    for a, b in zip(batch, single):
        # one CPU generator per image; batched matmuls may differ in the last float bits
        assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_weighted_negative_prompt_is_weighted_not_literal(tiny_session):
    s = tiny_session("sdxl")
    weighted = pixels(s.generate(config("sdxl", negative_prompt=SEED_NEGATIVE))[0])
    unweighted = pixels(s.generate(config("sdxl", negative_prompt=SEED_NEGATIVE.replace(":1.2", ":1.0")))[0])
    assert np.abs(weighted - unweighted).max() > 0


def test_png_carries_a1111_parameters(tiny_session, tmp_path):
    s = tiny_session("kolors")
    cfg = config("kolors", prompt="二次元,一个紫色短发小女孩", negative_prompt="丑陋,变形", scheduler="DPM++ 2M Karras", seed=0)
    paths = save_results(s.generate(cfg), tmp_path)
    info = parse_infotext(read_infotext(paths[0]))
    assert info["prompt"] == "二次元,一个紫色短发小女孩"
    assert info["negative_prompt"] == "丑陋,变形"
    assert info["Steps"] == "2" and info["Seed"] == "0" and info["Size"] == "64x64"
    assert info["Sampler"] == "DPM++ 2M" and info["Schedule type"] == "Karras"
    assert info["CFG scale"] == "4" and info["Model"] == "loraflow-tiny-kolors"


def test_model_hash_in_infotext_for_models_on_disk(tiny_model_dir, tmp_path):
    from loraflow.generate.session import GenerationSession
    from loraflow.models.hashing import model_hash

    folder = tiny_model_dir("sd15")
    cfg = config("sd15", model=str(folder))
    s = GenerationSession.from_options(cfg)
    info = parse_infotext(s.generate(cfg)[0].infotext)
    assert info["Model hash"] == model_hash(folder)
    assert info["Model"] == folder.name


def test_family_defaults_apply_when_unset(tiny_session):
    s = tiny_session("kolors")
    cfg = GenerateConfig(model="tiny:kolors", prompt="cat", height=64, width=64, seed=1, steps=1)
    info = parse_infotext(s.generate(cfg)[0].infotext)
    assert info["CFG scale"] == "5"  # Kolors' default guidance


def test_progress_reports_every_step(tiny_session):
    s = tiny_session("sd15")
    seen = []
    s.generate(config("sd15", num_images=2, batch_size=1, steps=3), progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6) and len(seen) == 6
