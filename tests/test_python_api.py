"""The Python API at the package top (`loraflow.load`, `Session.generate`, `loraflow.storyboard`):
it runs the same plain functions as the commands, returns pictures that carry their infotext, and
raises the commands' one-line errors naming the key."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import loraflow
from loraflow.errors import ConfigError

PROMPT = "a red circle on the left, white background"


@pytest.fixture(scope="module")
def demo():
    return loraflow.load(device="cpu", steps=2)  # no model: the bundled demo model


def test_import_and_help_stay_torch_free():
    code = ("import sys, loraflow, loraflow.cli\n"
            "assert callable(loraflow.train) and callable(loraflow.score)\n"
            "try:\n    loraflow.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_generate_returns_pil_images_with_their_infotext(demo, tmp_path):
    images = demo.generate(PROMPT, seed=7, num_images=2, progress=False)
    assert len(images) == 2 and images.seeds == [7, 8]  # image i uses seed + i, as A1111
    for image, seed in zip(images, (7, 8)):
        assert isinstance(image, Image.Image)
        text = image.info["parameters"]
        assert text.startswith(PROMPT + "\n") and f"Seed: {seed}," in text and "Steps: 2," in text
    paths = images.save(tmp_path)
    with Image.open(paths[1]) as saved:  # the PNG keeps the same text, and the same pixels
        assert saved.info["parameters"] == images[1].info["parameters"]
        assert np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(images[1]))
    assert Image.open(__import__("io").BytesIO(images._repr_png_())).size == (2 * 64, 64)  # inline: a grid


def test_generate_equals_the_command(demo, tmp_path):
    """Same options -> the same picture as `loraflow generate` (the API adds no logic of its own)."""
    from loraflow.cli import main

    assert main(["generate", "--prompt", PROMPT, "--seed", "3", "--steps", "2", "--device", "cpu",
                 "--out", str(tmp_path)]) == 0
    [png] = sorted(tmp_path.glob("*.png"))
    ours = demo.generate(PROMPT, seed=3, progress=False)[0]
    with Image.open(png) as theirs:
        assert np.array_equal(np.asarray(theirs.convert("RGB")), np.asarray(ours))
        assert theirs.info["parameters"] == ours.info["parameters"]


def test_progress_callback_sees_every_step(demo):
    seen = []
    demo.generate(PROMPT, seed=0, num_images=2, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]  # 2 images x 2 steps, one image per call


@pytest.mark.parametrize("options, key", [
    ({"stepz": 2}, "stepz"),
    ({"steps": 0}, "num_inference_steps"),
    ({"height": 70}, "height"),
    ({"model": "tiny:sdxl"}, "model"),
])
def test_bad_options_raise_the_one_line_error(demo, options, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as info:
        demo.generate(PROMPT, progress=False, **options)
    assert "\n" not in str(info.value)


def test_load_checks_options_before_loading():
    with pytest.raises(ConfigError, match="'dtype'"):
        loraflow.load(dtype="float8")
    with pytest.raises(ConfigError, match="LoRA not found: missing.safetensors"):
        loraflow.load(device="cpu", loras=[("missing.safetensors", 0.5)]).generate(PROMPT, progress=False)


def test_storyboard_from_a_dict(demo, tmp_path):
    story = {"title": "two", "style": "white background", "defaults": {"seed": 5, "steps": 2},
             "grid": {"columns": 2, "width": 256, "height": 128},
             "scenes": [{"title": "a", "prompt": "a red circle"}, {"title": "b", "prompt": "a blue square"}]}
    board = demo.storyboard(story, out=tmp_path / "story", progress=False)
    assert [p.info["parameters"].splitlines()[0] for p in board.panels] == [
        "white background,a red circle", "white background,a blue square"]
    assert board.grid.size == (256, 128)
    assert [s["seed"] for s in board.record["scenes"]] == [5, 5]  # seed_policy fixed, as the tutorial
    assert (tmp_path / "story" / "story.json").is_file() and board._repr_png_()[:4] == b"\x89PNG"


def test_storyboard_with_a_cast_on_the_demo_model_is_scored_by_the_checker(demo, tmp_path):
    from loraflow.demo.checker import read_image

    story = {"defaults": {"seed": 3, "steps": 12}, "characters": [{"name": "hero", "description": "a red star"}],
             "scenes": [{"prompt": "{hero} on the left, white background"}, {"prompt": "{hero} at the top, gray background"}]}
    board = demo.storyboard(story, out=tmp_path / "story", progress=False)
    assert board.record["identity"]["scorer"] == "demo-checker"
    for panel, scene in zip(board.panels, board.record["scenes"]):
        reading = read_image(panel)
        assert scene["scores"]["identity"]["hero"] == ((reading.colour == "red") + (reading.shape == "star")) / 2


def test_storyboard_top_level_loads_the_demo_model(tmp_path):
    board = loraflow.storyboard("examples/stories/demo-shapes.yaml", out=tmp_path / "s", steps=1, device="cpu",
                                grid_width=128, grid_height=256, progress=False)
    assert len(board.panels) == 8 and board.record["family"] == "sdxl"
    with pytest.raises(ConfigError, match="'scenes'"):
        loraflow.storyboard({"title": "empty"}, device="cpu", progress=False)


def test_packages_stay_packages():
    import loraflow.train.trainer  # the callable packages are still importable packages

    assert loraflow.train.TrainConfig is loraflow.train.config.TrainConfig
    assert loraflow.data.filter.__module__ == "loraflow.data.api"


def test_out_writes_the_pngs(demo, tmp_path):
    images = demo.generate(PROMPT, seed=1, out=tmp_path / "o", progress=False)
    assert images.paths == [tmp_path / "o" / "00000-1.png"]  # A1111 numbering: index-seed
    with Image.open(images.paths[0]) as saved:
        assert saved.info["parameters"] == images.infotexts[0]
