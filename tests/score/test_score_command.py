"""`loraflow score` on files: prompts from infotext / story.json / story YAML, table, JSON, chart,
the gate's exit code, and unreadable images reported rather than dropped."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from loraflow.generate.infotext import format_infotext, save_png_with_infotext
from loraflow.score.run import ScoreOptions, run_score
from score_helpers import clip_scores_by_hand, make_images

PROMPTS = ["a cat", "a red ball in the garden", "blue sky"]


@pytest.fixture
def story_dir(tmp_path):
    """scene-01..03.png carrying A1111 infotext, plus a storyboard grid that must not be scored."""
    folder = tmp_path / "story"
    folder.mkdir()
    for k, (image, prompt) in enumerate(zip(make_images(), PROMPTS), start=1):
        infotext = format_infotext(prompt, "", {"Steps": 2, "Seed": k, "Size": "48x40"})
        save_png_with_infotext(image, folder / f"scene-{k:02d}.png", infotext)
    make_images(1, (96, 80))[0].save(folder / "grid.png")
    return folder


def test_score_command_writes_table_json_and_chart(score_cli, story_dir, tiny_clip_dir, head_files, tmp_path, capsys):
    out_json, out_png = tmp_path / "r" / "scores.json", tmp_path / "r" / "scores.png"
    rc = score_cli(["score", str(story_dir), "--clip", str(tiny_clip_dir), "--aesthetic", str(head_files["mlp"]),
                    "--device", "cpu", "--json", str(out_json), "--chart", str(out_png)])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "scene-01.png" in stdout and "  mean" in stdout and "grid.png" not in stdout
    report = json.loads(out_json.read_text(encoding="utf-8"))
    assert [r["prompt"] for r in report["images"]] == PROMPTS  # from each PNG's own infotext
    assert all(r["aesthetic"] is not None and r["error"] is None for r in report["images"])
    expected = clip_scores_by_hand(tiny_clip_dir, make_images(), PROMPTS)  # the PNGs hold these pixels
    assert [r["clip"] for r in report["images"]] == pytest.approx(expected, abs=1e-3)
    (folder,) = report["folders"]
    aesthetic = [r["aesthetic"] for r in report["images"]]
    assert folder["images"] == 3 and folder["aesthetic_min"] == min(aesthetic)
    assert folder["aesthetic_mean"] == pytest.approx(sum(aesthetic) / 3)
    with Image.open(out_png) as chart:
        assert chart.format == "PNG" and chart.width > 400 and chart.height > 5 * 18


def test_gate_exit_code_and_message(score_cli, story_dir, tiny_clip_dir, head_files, capsys):
    args = ["score", str(story_dir), "--clip", str(tiny_clip_dir), "--aesthetic", str(head_files["mlp"]),
            "--device", "cpu"]
    assert score_cli(args + ["--gate", "100"]) == 3
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: gate 100 not reached: mean aesthetic score of") and str(story_dir) in err
    assert score_cli(args + ["--gate", "-100"]) == 0
    assert score_cli(["score", str(story_dir), "--clip", str(tiny_clip_dir), "--gate", "6"]) == 2
    assert "pass --aesthetic" in capsys.readouterr().err


def test_missing_weights_and_images_are_one_line_errors(score_cli, story_dir, tmp_path, capsys):
    assert score_cli(["score", str(story_dir), "--clip", str(tmp_path / "no-clip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: CLIP model not found") and "--clip" in err and "\n" not in err
    assert score_cli(["score", str(tmp_path / "nothing.png"), "--clip", str(tmp_path)]) == 2
    assert "image or folder not found" in capsys.readouterr().err


def test_prompts_from_story_json_and_story_yaml(scorer, story_dir):
    index = {"title": "t", "scenes": [{"index": k, "file": f"scene-{k:02d}.png", "prompt": f"story {p}"}
                                      for k, p in enumerate(PROMPTS[:2], start=1)]}
    (story_dir / "story.json").write_text(json.dumps(index), encoding="utf-8")
    report = run_score(ScoreOptions(images=[str(story_dir)], prompts=str(story_dir / "story.json")), scorer)
    assert [r["prompt"] for r in report["images"]] == ["story a cat", "story a red ball in the garden", None]
    assert report["images"][2]["clip"] is None and report["images"][2]["aesthetic"] is not None

    story = story_dir.parent / "story.yaml"
    story.write_text("style: anime style\nscenes:\n  - {prompt: a cat}\n  - {prompt: a dog}\n", encoding="utf-8")
    report = run_score(ScoreOptions(images=[str(story_dir / "scene-02.png"), str(story_dir / "scene-01.png")],
                                    prompts=str(story)), scorer)
    assert [r["prompt"] for r in report["images"]] == ["anime style,a dog", "anime style,a cat"]


def test_unreadable_image_is_reported_not_dropped(scorer, story_dir):
    from loraflow.score.run import format_table

    (story_dir / "scene-04.png").write_bytes(b"not a png")
    report = run_score(ScoreOptions(images=[str(story_dir)], gate=-100.0), scorer)
    bad = report["images"][-1]
    assert len(report["images"]) == 4 and bad["error"].startswith("cannot read image") and bad["aesthetic"] is None
    assert report["folders"][0]["errors"] == 1 and report["folders"][0]["aesthetic_mean"] is not None
    assert "error: cannot read image" in format_table(report)


def test_config_file_with_alias_keys_then_flags(score_cli, story_dir, tiny_clip_dir, tmp_path, capsys):
    cfg = tmp_path / "score.yaml"
    cfg.write_text(f"clip: {tiny_clip_dir}\njson: {tmp_path / 'a.json'}\ndevice: cpu\n", encoding="utf-8")
    assert score_cli(["score", str(story_dir), "--config", str(cfg), "--json-out", str(tmp_path / "b.json")]) == 0
    report = json.loads((tmp_path / "b.json").read_text(encoding="utf-8"))  # the flag won over the file
    assert not (tmp_path / "a.json").exists() and report["aesthetic"] is None
    assert all(r["aesthetic"] is None and r["clip"] is not None for r in report["images"])
    cfg.write_text("gaet: 6\n", encoding="utf-8")
    assert score_cli(["score", str(story_dir), "--config", str(cfg)]) == 2
    assert "unknown key 'gaet'" in capsys.readouterr().err
