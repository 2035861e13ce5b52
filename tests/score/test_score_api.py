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


def test_chart_reads_back_from_the_figure():
    """Bars equal the scores; the gate and each folder's mean are drawn where their values are."""
    from loraflow.score.chart import score_figure

    rows = [{"file": f"f/{n}.png", "folder": "f", "prompt": "p", "aesthetic": a, "clip": c, "error": None}
            for n, a, c in (("a", 4.0, 20.0), ("b", 6.5, 31.0), ("c", 5.0, 25.0))]
    rows.append({"file": "f/d.png", "folder": "f", "prompt": None, "aesthetic": None, "clip": None, "error": "bad"})
    folder = {"folder": "f", "images": 4, "errors": 1, "aesthetic_mean": 5.5, "aesthetic_min": 4.0,
              "clip_mean": 25.0, "clip_min": 20.0}
    figure = score_figure({"gate": 6.0, "images": rows, "folders": [folder]})
    aes_ax, clip_ax = figure.axes
    assert [p.get_width() for p in aes_ax.patches] == [4.0, 6.5, 5.0, 0.0]
    assert [p.get_width() for p in clip_ax.patches] == [20.0, 31.0, 25.0, 0.0]
    assert [t.get_text() for t in aes_ax.get_yticklabels()] == ["a.png", "b.png", "c.png", "d.png"]
    assert aes_ax.get_xlabel() == "aesthetic score (0-10)" and clip_ax.get_xlabel() == "CLIP score (0-100)"
    assert aes_ax.get_xlim() == (0.0, 10.0) and len(aes_ax.get_xticks()) > 2
    lines = {ln.get_label(): ln.get_xdata()[0] for ln in aes_ax.lines}
    assert lines == {"mean 5.5": 5.5, "gate 6": 6.0}
    assert [t.get_text() for t in aes_ax.texts] == ["unreadable"]
