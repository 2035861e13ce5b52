"""Storyboards with references: a scene steered by the previous scene's picture (`@previous`),
story-level ControlNet weights per type, img2img scenes, and a clear error for scene 1."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from loraflow.errors import ConfigError
from loraflow.generate.control.tiny import save_tiny_controlnet
from loraflow.generate.infotext import parse_infotext, read_infotext
from loraflow.generate.storyboard import StoryboardConfig, run_storyboard


def write_story(tmp_path, scenes, **extra):
    story = {"title": "t", "style": "anime", "defaults": {"height": 64, "width": 64, "steps": 3, "seed": 0},
             "grid": {"columns": 2, "width": 128, "height": 64}, "scenes": scenes, **extra}
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(story), encoding="utf-8")
    return path


def test_previous_scene_steers_the_next(tiny_session, tmp_path):
    cn = str(save_tiny_controlnet("sd15", tmp_path / "cn"))
    scenes = [{"title": "a", "prompt": "a cat in a garden"},
              {"title": "b", "prompt": "a cat in a garden", "control": [{"type": "canny", "image": "@previous"}]},
              {"title": "c", "prompt": "a cat in a garden", "init_image": "@previous", "strength": 0.5}]
    story = write_story(tmp_path, scenes, controlnets={"canny": cn})
    out = tmp_path / "out"
    index = run_storyboard(StoryboardConfig(story=str(story), out=str(out), model="tiny:sd15"),
                           session=tiny_session("sd15"))
    assert sorted(p.name for p in out.glob("scene-*.png")) == [
        "scene-01.png", "scene-02.control0.png", "scene-02.png", "scene-03.png"]
    # scene 2's control map is the canny map of scene 1's picture
    first = np.asarray(Image.open(out / "scene-01.png"))
    import cv2

    assert np.array_equal(np.asarray(Image.open(out / "scene-02.control0.png"))[:, :, 0], cv2.Canny(first, 100, 200))
    # same prompt and seed: without the control scene 2 would equal scene 1
    assert np.abs(np.asarray(Image.open(out / "scene-02.png"), dtype=np.int16) - first).max() > 0
    info2 = parse_infotext(read_infotext(out / "scene-02.png"))
    assert info2["ControlNet 0"].startswith("Module: canny, Model: cn [")
    assert parse_infotext(read_infotext(out / "scene-03.png"))["Denoising strength"] == "0.5"
    assert json.loads((out / "story.json").read_text(encoding="utf-8")) == index


def test_previous_in_the_first_scene_is_an_error(tmp_path):
    story = write_story(tmp_path, [{"prompt": "x", "init_image": "@previous"}])
    with pytest.raises(ConfigError, match="scene 1 uses @previous"):
        run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path / "o"), model="tiny:sd15"))


def test_scene_control_text_form_and_bad_type(tmp_path):
    from loraflow.generate.storyboard import load_story

    story = load_story(write_story(tmp_path, [{"prompt": "x", "control": "canny:ref.png:0.5"}]))
    assert story.scenes[0].control[0].scale == 0.5
    with pytest.raises(ConfigError, match="control"):
        load_story(write_story(tmp_path, [{"prompt": "x", "control": [{"type": "blur", "image": "a.png"}]}]))
