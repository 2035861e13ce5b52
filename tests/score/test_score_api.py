"""`loraflow.score(images, **options)`: the report of `loraflow score` as an object, equal to what
the command's function returns; the gate as `.passed`/`.failure`; errors naming the key."""
from __future__ import annotations

import pytest

import loraflow
from loraflow.errors import ConfigError
from loraflow.generate.infotext import format_infotext, save_png_with_infotext
from loraflow.score.run import ScoreOptions, run_score
from score_helpers import make_images


@pytest.fixture
def scenes(tmp_path):
    for k, image in enumerate(make_images(), start=1):
        save_png_with_infotext(image, tmp_path / f"scene-{k:02d}.png", format_infotext(f"prompt {k}", "", {"Steps": 2, "Seed": k, "Size": "48x40"}))
    return tmp_path


def test_report_equals_the_commands(scenes, tiny_clip_dir, head_files):
    weights = {"clip": str(tiny_clip_dir), "aesthetic": str(head_files["mlp"]), "device": "cpu"}
    report = loraflow.score(scenes, gate=100, progress=False, **weights)
    direct = run_score(ScoreOptions(images=[str(scenes)], gate=100, **weights))
    assert report.report == direct
    assert [r["prompt"] for r in report.images] == ["prompt 1", "prompt 2", "prompt 3"]
    assert not report.passed and report.failure.startswith("gate 100 not reached")
    assert str(report).splitlines()[0].split() == ["image", "aesthetic", "clip"]


def test_bad_input_raises(tmp_path):
    with pytest.raises(ConfigError, match="no images"):
        loraflow.score([], progress=False)
    with pytest.raises(ConfigError, match="'batch_size'"):
        loraflow.score(tmp_path, batch_size=0, progress=False)
