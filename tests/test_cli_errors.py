"""Bad input from a careless user: one line on stderr (`error: ...`, exit code 2) naming the key or
file, never a traceback, and nothing silently accepted or lost."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from loraflow.cli import main


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    lines = [line[line.index("error: "):] for line in err.replace("\r", "\n").splitlines() if "error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(folder / f"{i}.png")
    return folder


def test_data_stats_with_a_bad_image_field_reports_those_lines(tmp_path, images, capsys):
    manifest = tmp_path / "m.jsonl"
    rows = [{"text": "ok", "images": [str(images / "0.png")]}, {"text": "n", "images": 5},
            {"text": "nested", "images": [[1, 2]]}, {"text": None, "images": {"a": 1}}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["data", "stats", str(manifest), "--image-key", "images"]) == 0
    out = capsys.readouterr().out
    assert "1 images, 3 errored" in out


def test_data_filter_export_onto_its_dataset_is_refused(tmp_path, capsys):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"text": "a", "images": []}\n')
    before = dataset.read_bytes()
    for export in (str(dataset), str(tmp_path / "sub" / ".." / "d.jsonl")):
        recipe = tmp_path / "r.yaml"
        recipe.write_text(f"dataset_path: {dataset}\nexport_path: {export}\nprocess: []\n")
        assert main(["data", "filter", "--config", str(recipe)]) == 2
        _one_line_error(capsys, "export_path", "dataset_path")
    assert dataset.read_bytes() == before


@pytest.mark.parametrize("params,words", [
    ({"image_shape_filter": {"min_width": 500, "max_width": 100}}, ("min_width = 500", "max_width = 100")),
    ({"image_size_filter": {"min_size": "2MB", "max_size": "1KB"}}, ("min_size", "max_size")),
    ({"text_length_filter": {"min_len": 10, "max_len": 2}}, ("min_len",)),
    ({"image_aspect_ratio_filter": {"min_ratio": float("nan")}}, ("min_ratio", "NaN")),
    ({"image_shape_filter": {"min_width": True}}, ("min_width", "true/false")),
])
def test_recipe_bounds_that_reject_everything_are_refused(tmp_path, capsys, params, words):
    dataset = tmp_path / "d.jsonl"
    dataset.write_text('{"text": "a", "images": []}\n')
    recipe = tmp_path / "r.json"  # JSON, so NaN is given as a number and not a string
    recipe.write_text(json.dumps({"dataset_path": str(dataset), "export_path": str(tmp_path / "o.jsonl"),
                                  "process": [params]}))
    assert main(["data", "filter", "--config", str(recipe)]) == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "o.jsonl").exists()


def test_data_export_writes_an_empty_caption_for_null_text(tmp_path, images, capsys):
    kept = tmp_path / "kept.jsonl"
    kept.write_text(json.dumps({"text": None, "image": [str(images / "0.png")]}) + "\n")
    assert main(["data", "export", str(kept), "--out", str(tmp_path / "out"), "--format", "imagefolder",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "out" / "train" / "metadata.jsonl").read_text().splitlines()]
    assert rows == [{"file_name": "0.jpg", "text": ""}]


@pytest.mark.parametrize("argv,words", [
    (["generate", "--prompt", "x", "--out", "{file}"], ("'out'", "existing file")),
    (["storyboard", "{story}", "--out", "{file}"], ("'out'", "existing file")),
    (["train", "--dataset", "{tmp}", "--output", "{file}"], ("'output'", "existing file")),
    (["data", "export", "{file}", "--out", "{file}"], ("'out'", "existing file")),
    (["generate", "--prompt", "x", "--device", "quantum"], ("'device'", "quantum")),
    (["train", "--dataset", "{tmp}", "--device", "tpu:9"], ("'device'",)),
    (["generate", "--prompt", "x", "--guidance-scale", "nan"], ("'guidance_scale'", "NaN")),
    (["generate", "--prompt", "x", "--guidance-scale", "inf"], ("'guidance_scale'", "infinity")),
    (["train", "--dataset", "{tmp}", "--learning-rate", "nan"], ("'learning_rate'",)),
    (["storyboard", "{story_bad_size}"], ("defaults.width", "multiple of 8")),
    (["storyboard", "{story_huge_grid}"], ("grid.width",)),
    (["storyboard", "{story}", "--grid-width", "100000"], ("'grid_width'",)),
    (["workflow", "export", "--prompt", "x", "--out", "{tmp}/wf.json", "--width", "-5"], ("width = -5",)),
    (["workflow", "export", "--prompt", "x", "--out", "{tmp}/wf.json", "--steps", "-1"], ("steps = -1",)),
    (["workflow", "export", "--prompt", "x", "--out", "{tmp}/wf.json", "--cfg", "nan"], ("cfg",)),
    (["workflow", "export", "--prompt", "x", "--out", "{tmp}/wf.json", "--lora", "{file}", "--lora-weight", "1e308"],
     ("strength_model",)),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, words):
    file = tmp_path / "existing.txt"
    file.write_text("a file, not a folder")
    stories = {"story": {"scenes": [{"prompt": "a"}]},
               "story_bad_size": {"defaults": {"width": 100, "height": 64}, "scenes": [{"prompt": "a"}]},
               "story_huge_grid": {"grid": {"width": 100000, "height": 100000}, "scenes": [{"prompt": "a"}]}}
    names = {"file": str(file), "tmp": str(tmp_path)}
    for key, story in stories.items():
        names[key] = str(tmp_path / f"{key}.json")
        (tmp_path / f"{key}.json").write_text(json.dumps(story))
    assert main([a.format(**names) for a in argv]) == 2
    _one_line_error(capsys, *words)
    assert not (tmp_path / "wf.json").exists()


def test_booleans_where_numbers_are_wanted_in_a_config_file(tmp_path, capsys):
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"dataset: {tmp_path}\nmax_steps: true\n")
    assert main(["train", "--config", str(cfg)]) == 2
    _one_line_error(capsys, "'max_steps'", "true/false")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused_not_run_on_the_cpu(tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--model", "tiny:sdxl", "--device", "cuda",
                 "--out", str(tmp_path / "o")]) == 2
    _one_line_error(capsys, "cuda", "not available")
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_a_grid_font_that_is_not_a_font_is_one_line_before_any_panel_is_drawn(tmp_path, capsys):
    fake = tmp_path / "font.ttf"
    fake.write_text("not a font")
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"grid": {"font": str(fake), "captions": True}, "scenes": [{"prompt": "a"}]}))
    assert main(["storyboard", str(story), "--model", "tiny:sdxl", "--out", str(tmp_path / "out")]) == 2
    _one_line_error(capsys, "font.ttf", "not a TrueType")
    assert not (tmp_path / "out" / "scene-01.png").exists()


def test_an_absurd_lora_weight_is_refused(tmp_path):
    from loraflow.errors import ConfigError
    from loraflow.generate.session import parse_lora_arg

    lora = tmp_path / "x.safetensors"
    lora.write_bytes(b"")
    assert parse_lora_arg(f"{lora}:0.8", []).weight == 0.8
    for weight in ("1e308", "nan", "-101"):
        with pytest.raises(ConfigError, match="weight"):
            parse_lora_arg(f"{lora}:{weight}", [])


def test_allow_pickle_reaches_lora_loading(tmp_path, capsys):
    """A `.pt` LoRA is refused without --allow-pickle and used with it (weights_only=True)."""
    from safetensors.torch import load_file

    from loraflow.models.lora.save import save_lora
    from loraflow.models.tiny import build_tiny_pipeline

    import copy

    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]),
                                   copy.deepcopy(build_tiny_pipeline("sdxl").unet))
    st = tmp_path / "l.safetensors"
    save_lora(st, get_peft_model_state_dict(unet), None, family="sdxl", rank=2, alpha=2.0, fmt="kohya",
              dtype=torch.float32)
    torch.save(load_file(st), tmp_path / "l.pt")
    base = ["generate", "--model", "tiny:sdxl", "--prompt", "x", "--steps", "1", "--width", "64", "--height", "64",
            "--lora", str(tmp_path / "l.pt"), "--out", str(tmp_path / "o")]
    assert main(base) == 2
    _one_line_error(capsys, "pickle")
    assert main(base + ["--allow-pickle"]) == 0
    assert len(list((tmp_path / "o").glob("*.png"))) == 1


def test_storyboard_never_writes_a_panel_over_its_own_init_image(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    Image.new("RGB", (64, 64), "red").save(out / "scene-01.png")  # a previous run's panel, reused as input
    before = (out / "scene-01.png").read_bytes()
    story = tmp_path / "story.json"
    story.write_text(json.dumps({"scenes": [{"prompt": "a", "init_image": str(out / "scene-01.png")}]}))
    assert main(["storyboard", str(story), "--model", "tiny:sdxl", "--out", str(out)]) == 2
    _one_line_error(capsys, "scene-01.png", "scenes.0.init_image")
    assert (out / "scene-01.png").read_bytes() == before
