"""The command line: help without torch, generate/storyboard end to end on files, one-line errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from loraflow.cli import main
from loraflow.generate.infotext import parse_infotext, read_infotext

ROOT = Path(__file__).resolve().parents[1]


def test_help_does_not_import_torch():
    code = "import sys; from loraflow.cli import build_parser; build_parser().format_help(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_generate_from_saved_folder_with_alias_flags(tiny_model_dir, tmp_path, capsys):
    folder = tiny_model_dir("sd15")
    rc = main(["generate", "--model", str(folder), "--prompt", "a red (circle:1.2)", "--cfg-scale", "3",
               "--steps", "2", "--height", "64", "--width", "64", "--seed", "5", "--num-images", "2",
               "--scheduler", "euler_a", "--out", str(tmp_path)])
    assert rc == 0
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == ["00000-5.png", "00001-6.png"]
    info = parse_infotext(read_infotext(pngs[0]))
    assert info["CFG scale"] == "3" and info["Sampler"] == "Euler a" and info["Seed"] == "5"


def test_generate_config_file_then_flags(tiny_model_dir, tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text("model: tiny:kolors\nprompt: 小猫\ncfg_scale: 4\nsteps: 2\nheight: 64\nwidth: 64\nseed: 1\n",
                   encoding="utf-8")
    assert main(["generate", "--config", str(cfg), "--seed", "9", "--out", str(tmp_path / "o")]) == 0
    assert [p.name for p in (tmp_path / "o").glob("*.png")] == ["00000-9.png"]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("prompt: x\nguidance: 3\n", encoding="utf-8")
    assert main(["generate", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown key 'guidance'" in err and "\n" not in err
    assert main(["generate", "--model", "tiny:sdxl", "--prompt", "x", "--height", "65"]) == 2
    assert "multiple of 8" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "no-such-model"), "--prompt", "x"]) == 2
    assert "model not found" in capsys.readouterr().err
    assert main(["generate", "--model", "tiny:sd15", "--prompt", "x", "--scheduler", "Eular"]) == 2
    assert "unknown scheduler 'Eular'" in capsys.readouterr().err


def test_storyboard_command(tmp_path, capsys):
    story = ROOT / "examples" / "stories" / "cat-time-travel.zh.yaml"
    rc = main(["storyboard", str(story), "--model", "tiny:kolors", "--steps", "1", "--height", "64", "--width", "64",
               "--grid-width", "128", "--grid-height", "256", "--out", str(tmp_path)])
    assert rc == 0
    assert len(list(tmp_path.glob("scene-*.png"))) == 8 and (tmp_path / "story.json").is_file()
    assert "8 scenes" in capsys.readouterr().out


def test_tutorial_underscore_flags_are_accepted(tmp_path):
    from loraflow.cli import normalize_flags

    assert normalize_flags(["train", "--lora_rank", "16", "--center_crop", "--prompt", "--not_a_flag?", "--a_b=x_y"]) == \
        ["train", "--lora-rank", "16", "--center-crop", "--prompt", "--not_a_flag?", "--a-b=x_y"]
    rc = main(["generate", "--model", "tiny:sd15", "--prompt", "x", "--cfg_scale", "3", "--num_inference_steps", "1",
               "--height", "64", "--width", "64", "--seed", "1", "--out", str(tmp_path)])
    assert rc == 0 and (tmp_path / "00000-1.png").is_file()


def test_storyboard_with_a_cast_on_the_demo_model_scores_identity_and_repairs(tmp_path, capsys):
    story = ROOT / "examples" / "stories" / "demo-cast.yaml"
    rc = main(["storyboard", str(story), "--steps", "2", "--out", str(tmp_path), "--repair",
               "--repair-threshold", "1", "--repair-budget", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    index = json.loads((tmp_path / "story.json").read_text(encoding="utf-8"))
    assert index["identity"]["scorer"] == "demo-checker"  # auto: the demo model's checker
    assert all(set(s["scores"]["identity"]) == {m["name"] for m in s["cast"]} for s in index["scenes"])
    assert (tmp_path / "contact-sheet.png").is_file() and "contact-sheet.html" in out
    assert f"repair: {index['repair']['renders']} of 2 re-renders" in out
