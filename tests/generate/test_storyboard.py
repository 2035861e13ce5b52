"""Storyboard: N scenes -> N images + grid of the requested size + story.json; prompt cache."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from loraflow.errors import ConfigError
from loraflow.generate.grid import make_grid
from loraflow.generate.storyboard import StoryboardConfig, load_story, run_storyboard

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "stories"


def write_story(tmp_path, n=4, **extra):
    story = {
        "title": "test",
        "style": "anime",
        "negative_prompt": "(lowres, low quality:1.2), text",
        "defaults": {"height": 64, "width": 64, "num_inference_steps": 2, "guidance_scale": 4, "seed": 0},
        "grid": {"columns": 2, "width": 128, "height": 256},
        "scenes": [{"title": f"scene {i}", "prompt": f"a cat number {i}"} for i in range(n)],
    }
    story.update(extra)
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(story, allow_unicode=True), encoding="utf-8")
    return path


def test_storyboard_makes_images_grid_and_index(tiny_session, tmp_path):
    story = write_story(tmp_path, n=8)
    out = tmp_path / "out"
    session = tiny_session("sdxl")
    calls_before = session.encoder_calls
    index = run_storyboard(StoryboardConfig(story=str(story), out=str(out), model="tiny:sdxl"), session=session)
    files = sorted(p.name for p in out.glob("scene-*.png"))
    assert files == [f"scene-{i:02d}.png" for i in range(1, 9)]
    assert Image.open(out / "grid.png").size == (128, 256)
    saved = json.loads((out / "story.json").read_text(encoding="utf-8"))
    assert saved == index and len(saved["scenes"]) == 8
    assert saved["scenes"][0]["prompt"] == "anime,a cat number 0"
    assert all(s["seed"] == 0 for s in saved["scenes"])  # seed policy "fixed", as the tutorial
    # 8 distinct prompts + 1 shared negative prompt -> 9 encoder runs, not 16
    assert session.encoder_calls - calls_before <= 9


def test_flags_override_story_defaults_and_increment_policy(tiny_session, tmp_path):
    story = write_story(tmp_path, n=2, defaults={"height": 64, "width": 64, "steps": 2, "seed": 10,
                                                 "seed_policy": "increment"})
    cfg = StoryboardConfig(story=str(story), out=str(tmp_path / "o"), model="tiny:sd15", width=72,
                           grid_width=100, grid_height=50)
    index = run_storyboard(cfg, session=tiny_session("sd15"))
    assert [s["seed"] for s in index["scenes"]] == [10, 11]
    assert Image.open(tmp_path / "o" / "scene-01.png").size == (72, 64)
    assert index["grid_size"] == [100, 50]


def test_batched_scenes_equal_unbatched(tiny_session, tmp_path):
    import numpy as np

    story = write_story(tmp_path, n=4)
    a = run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "a")), session=tiny_session("kolors"))
    b = run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "b"), batch_size=4),
                       session=tiny_session("kolors"))
    for sa, sb in zip(a["scenes"], b["scenes"]):
        ia = np.asarray(Image.open(tmp_path / "a" / sa["file"]), dtype=np.int16)
        ib = np.asarray(Image.open(tmp_path / "b" / sb["file"]), dtype=np.int16)
        assert np.abs(ia - ib).max() <= 1


def test_grid_with_cjk_captions_has_requested_size():
    panels = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue", "white")]
    grid = make_grid(panels, columns=2, size=(200, 300), captions=["现代小猫玩耍", "b", "c", "d"])
    assert grid.size == (200, 300)


def test_bad_story_gives_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("title: x\nscenes: []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="scenes"):
        load_story(bad)
    bad.write_text("title: x\nscenes:\n  - {promt: typo}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'promt'"):
        load_story(bad)


@pytest.mark.parametrize("name", ["cat-time-travel.zh.yaml", "lighthouse.en.yaml"])
def test_example_stories_parse(name):
    story = load_story(EXAMPLES / name)
    assert len(story.scenes) == 8


def test_shared_negative_prompt_reaches_index_infotext_and_pixels(tiny_session, tmp_path):
    """The story's negative prompt is used for every scene: recorded in story.json and in the PNG
    infotext, and each panel equals a direct `generate` with that negative prompt (and not without)."""
    import numpy as np

    from loraflow.generate.infotext import parse_infotext, read_infotext
    from loraflow.generate.options import GenerateConfig

    negative = "(lowres, low quality:1.2), text"
    story = write_story(tmp_path, n=2, negative_prompt=negative)
    session = tiny_session("sdxl")
    index = run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "out")), session=session)

    def direct(prompt, negative_prompt):
        config = GenerateConfig(model="tiny:sdxl", prompt=prompt, negative_prompt=negative_prompt, steps=2,
                                height=64, width=64, seed=0, guidance_scale=4)
        return np.asarray(session.generate(config)[0].image, dtype=np.int16)

    for k, scene in enumerate(index["scenes"]):
        assert scene["negative_prompt"] == negative
        png = tmp_path / "out" / scene["file"]
        assert parse_infotext(read_infotext(png))["negative_prompt"] == negative
        panel = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
        prompt = f"anime,a cat number {k}"
        assert np.abs(panel - direct(prompt, negative)).max() <= 1
        assert np.abs(panel - direct(prompt, "")).max() > 1  # the negative prompt matters at all
