"""`storyboard --character-sheet NAME` draws K candidate portraits and nothing else; `--use-sheet NAME[:PICKS]`
trains a character LoRA on exactly the picked ones and renders the story with it. The demo model draws;
its checker (`read_image`) gives the identity scores independently of the scorer under test."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from loraflow.cli import main
from loraflow.demo.checker import read_image
from loraflow.demo.identity import DemoIdentity
from loraflow.errors import ConfigError
from loraflow.generate.character_sheet import chosen_candidates, parse_use_sheet, render_sheet
from loraflow.generate.options import GenerateConfig
from loraflow.generate.story import SheetCommand, StoryboardConfig

STEPS = 2
SEED = 3
# the hero's words, then the story's framing below: every portrait's prompt, and its training caption
PORTRAIT_PROMPT = "a red star,in the center, white background"


@pytest.fixture(scope="module")
def demo_session():
    from loraflow.generate.session import GenerationSession

    return GenerationSession.from_options(GenerateConfig(device="cpu"))


@pytest.fixture
def story(tmp_path):
    data = {"title": "sheet", "defaults": {"steps": STEPS, "seed": SEED},
            "characters": [{"name": "hero", "description": {"en": "a red star", "zh": "红色的星形"}},
                           {"name": "friend", "description": "a blue circle"}],
            "sheet": {"framing": {"en": "in the center, white background"}, "candidates": 5},
            # a few steps at a high rate: enough for the LoRA to change the pictures visibly, fast on a CPU
            "sheet_training": {"max_steps": 3, "learning_rate": 0.01, "cache_dir": str(tmp_path / "cache"),
                               "device": "cpu"},
            "scenes": [{"prompt": "{hero} on the left, black background"},
                       {"prompt": "{friend} at the top, gray background"},
                       {"prompt": "{hero} at the bottom, white background"}]}
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)


def test_sheet_renders_k_distinct_candidates_and_nothing_else(story, tmp_path, demo_session):
    out = tmp_path / "out"
    sheet = render_sheet(StoryboardConfig(story=str(story), out=str(out), device="cpu"),
                         SheetCommand(character_sheet="hero", candidates=3), session=demo_session,
                         identity=DemoIdentity())
    folder = out / "sheets" / "hero"
    assert sheet["seeds"] == [SEED, SEED + 1, SEED + 2] and sheet["prompt"] == PORTRAIT_PROMPT
    assert [c["file"] for c in sheet["candidates"]] == ["candidate-01.png", "candidate-02.png", "candidate-03.png"]
    images = [pixels(folder / c["file"]) for c in sheet["candidates"]]
    assert all(not np.array_equal(images[a], images[b]) for a in range(3) for b in range(a + 1, 3))
    for c, image in zip(sheet["candidates"], images):
        assert f"Seed: {c['seed']}" in Image.open(folder / c["file"]).text["parameters"]
        [again] = demo_session.generate_many([GenerateConfig(prompt=PORTRAIT_PROMPT, steps=STEPS, seed=c["seed"])])
        assert np.array_equal(np.asarray(again.image, dtype=np.float32), image)  # the file is what its seed draws
        reading = read_image(Image.open(folder / c["file"]))
        assert c["scores"]["identity"]["hero"] == ((reading.colour == "red") + (reading.shape == "star")) / 2
    assert Image.open(folder / "grid.png").width == 3 * images[0].shape[1]  # one row of three
    assert json.loads((folder / "sheet.json").read_text(encoding="utf-8")) == sheet
    assert sorted(p.name for p in out.iterdir()) == ["sheets"]  # no panel, grid or story.json


def test_default_picks_all_or_the_better_half_by_score():
    def sheet(*combined):
        return {"character": "hero", "candidates": [
            {"index": j, "file": f"c{j}", **({"scores": {"combined": v}} if v is not None else {})}
            for j, v in enumerate(combined, 1)]}

    def numbers(entries):
        return [c["index"] for c in entries]

    assert numbers(chosen_candidates(sheet(None, None, None), None)) == [1, 2, 3]
    assert numbers(chosen_candidates(sheet(0.5, 1.0, 1.0, 0.2, 0.9), None)) == [2, 3, 5]  # ceil(5/2) best
    assert numbers(chosen_candidates(sheet(0.5, 1.0, 1.0, 0.2), None, top=1)) == [2]  # ties: the lower number
    assert numbers(chosen_candidates(sheet(0.5, 1.0, 1.0, 0.2), [4, 1])) == [1, 4]  # picks win over scores
    with pytest.raises(ConfigError, match="pick 4 is out of range; the sheet has candidates 1..3"):
        chosen_candidates(sheet(None, None, None), [1, 4])
    assert parse_use_sheet("hero") == ("hero", None) and parse_use_sheet("hero:1,3") == ("hero", [1, 3])
    for bad in ("hero:1,x", "hero:2,2", ":1"):
        with pytest.raises(ConfigError, match="--use-sheet"):
            parse_use_sheet(bad)


def test_use_sheet_trains_on_exactly_the_picks_and_renders_with_the_lora(story, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["storyboard", str(story), "--out", str(out), "--device", "cpu"]
    assert main(base + ["--character-sheet", "hero", "--candidates", "4"]) == 0
    assert main(base + ["--use-sheet", "hero:1,3"]) == 0
    folder = out / "sheets" / "hero"
    index = json.loads((out / "story.json").read_text(encoding="utf-8"))
    record = index["character_sheet"]
    assert record["picks"] == [1, 3] and record["files"] == ["candidate-01.png", "candidate-03.png"]

    # the training set: one row per pick, captioned with the hero's words; each exported JPEG is its pick
    with open(folder / "train-1-3" / "dataset" / "train" / "metadata.csv", encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [PORTRAIT_PROMPT, PORTRAIT_PROMPT]  # no style: caption = portrait prompt
    candidates = [pixels(folder / f"candidate-{j:02d}.png") for j in (1, 2, 3, 4)]
    for row, pick in zip(rows, (1, 3)):
        exported = pixels(folder / "train-1-3" / "dataset" / "train" / row["file_name"])
        errors = [np.abs(exported - c).mean() for c in candidates]
        assert int(np.argmin(errors)) + 1 == pick and errors[pick - 1] < 3  # JPEG quality 95: a few levels off

    # the LoRA: trained the asked steps, hashed as written, named for the hero's panels only
    lora = folder / "train-1-3" / "hero.safetensors"
    assert record["lora"] == str(lora) and record["train"]["steps"] == 3
    assert record["sha256"] == hashlib.sha256(lora.read_bytes()).hexdigest()
    for scene in index["scenes"]:
        names = [c["name"] for c in scene["cast"]]
        assert (f"{lora}:1" in scene["loras"]) == (names == ["hero"])

    # it loads and acts: the hero's first panel differs from the same seed drawn without it
    plain = tmp_path / "plain"
    assert main(["storyboard", str(story), "--out", str(plain), "--device", "cpu"]) == 0
    assert not np.array_equal(pixels(out / "scene-01.png"), pixels(plain / "scene-01.png"))
    assert np.array_equal(pixels(out / "scene-02.png"), pixels(plain / "scene-02.png"))  # the friend's panel
    assert "trained on candidates 1, 3 (3 steps" in capsys.readouterr().out


def one_line_error(capsys, *words: str) -> None:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.mark.parametrize("flags, words", [
    (["--character-sheet", "villain"], ("--character-sheet", "unknown character 'villain'", "hero, friend")),
    (["--use-sheet", "villain"], ("--use-sheet", "unknown character 'villain'")),
    (["--use-sheet", "hero"], ("no sheet at", "sheets/hero/sheet.json", "--character-sheet hero")),
    (["--use-sheet", "hero:1,two"], ("--use-sheet 'hero:1,two'", "picks")),
    (["--character-sheet", "hero", "--use-sheet", "hero"], ("two steps",)),
])
def test_sheet_errors_are_one_line(story, tmp_path, capsys, flags, words):
    assert main(["storyboard", str(story), "--out", str(tmp_path / "o"), "--device", "cpu", *flags]) == 2
    one_line_error(capsys, *words)
    assert not (tmp_path / "o" / "story.json").exists()


def test_picks_out_of_range_is_one_line_after_the_sheet(story, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["storyboard", str(story), "--out", str(out), "--device", "cpu", "--character-sheet", "hero",
                 "--candidates", "2"]) == 0
    capsys.readouterr()
    assert main(["storyboard", str(story), "--out", str(out), "--device", "cpu", "--use-sheet", "hero:2,3"]) == 2
    one_line_error(capsys, "pick 3 is out of range", "1..2")
    assert not (out / "sheets" / "hero" / "train-2-3").exists()  # nothing trained
    data = yaml.safe_load(story.read_text(encoding="utf-8"))
    for training, words in (({"lora_rnk": 4}, "lora_rnk"), ({"output": "elsewhere"}, "sheet_training.output")):
        story.write_text(yaml.safe_dump({**data, "sheet_training": training}, allow_unicode=True), encoding="utf-8")
        assert main(["storyboard", str(story), "--out", str(out), "--device", "cpu", "--use-sheet", "hero:2"]) == 2
        one_line_error(capsys, words)
        assert not (out / "sheets" / "hero" / "train-2").exists()
