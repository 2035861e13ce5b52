"""`loraflow.data.ingest / filter / export / stats` from Python: the commands' functions, their
result objects (counts and the records), and the commands' one-line errors naming the key."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

import loraflow
from data_helpers import noise_image, save
from loraflow.errors import ConfigError

# (width, height) of the raw images; the recipe keeps width >= 64 -- decided here, by hand
SIZES = [(64, 64), (96, 64), (48, 64), (80, 40), (32, 32)]
KEPT = [(64, 64), (96, 64), (80, 40)]


def test_the_whole_data_path(tmp_path):
    raw = tmp_path / "raw"
    for i, (w, h) in enumerate(SIZES):
        save(noise_image(w, h, seed=i), raw / f"{i}.png")
        (raw / f"{i}.txt").write_text(f"shape number {i}", encoding="utf-8")
    ingested = loraflow.data.ingest(raw, out=tmp_path / "input", progress=False)
    assert len(ingested.written) == len(SIZES) and not ingested.errored

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(tmp_path / "input" / "metadata.jsonl"), "export_path": str(tmp_path / "out" / "result.jsonl"),
        "np": 1, "image_key": "image", "process": [{"image_shape_filter": {"min_width": 64}}]}), encoding="utf-8")
    filtered = loraflow.data.filter(recipe, progress=False)
    kept_sizes = sorted(Image.open(r["image"][0]).size for r in filtered.kept)
    assert kept_sizes == sorted(KEPT) and len(filtered.rejected) == len(SIZES) - len(KEPT)
    assert filtered.rejected_by == {"image_shape_filter": 2}

    exported = loraflow.data.export(filtered.outputs["kept"], out=tmp_path / "set", trigger_word="sks", progress=False)
    assert sorted(caption for _, caption in exported.written) == sorted(
        f"sks, {r['text']}" for r in filtered.kept)

    report = loraflow.data.stats(tmp_path / "set", plot=tmp_path / "stats.png", progress=False)
    assert report.count == len(KEPT)
    assert sorted(report.stats.values["width"]) == sorted(w for w, _ in KEPT)
    assert Path(report.plot).is_file() and report._repr_png_()[:4] == b"\x89PNG"


def test_bad_options_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="'format'"):
        loraflow.data.export(tmp_path / "x.jsonl", out=tmp_path / "o", format="parquet")
    with pytest.raises(ConfigError, match="unknown key 'captoin'"):
        loraflow.data.ingest(tmp_path, out=tmp_path / "o", captoin="x")
    with pytest.raises(ConfigError, match="give --config RECIPE"):
        loraflow.data.filter("")


def test_histograms_read_back_from_the_figure():
    """Bar heights equal numpy's histogram of the values; x labels carry units; counts are integers."""
    import numpy as np

    from loraflow.data.stats_plot import BINS, histogram_figure
    from loraflow.data.stats_run import DatasetStats

    stats = DatasetStats()
    widths = [512, 768, 768, 1024, 1024, 1024]
    for w in widths:
        for key, v in zip(("width", "height", "aspect", "file_kb", "caption_chars"), (w, 512, w / 512, w / 10, 12)):
            stats.values[key].append(v)
    axes = histogram_figure(stats).axes
    width_ax = axes[0]
    expected, _ = np.histogram(widths, bins=BINS, range=(512, 1024))
    assert [p.get_height() for p in width_ax.patches] == list(expected)
    assert [ax.get_xlabel() for ax in axes[:5]] == ["width (px)", "height (px)", "aspect ratio (width / height)",
                                                   "file size (KiB)", "caption length (characters)"]
    assert all(ax.get_ylabel() == "images" and len(ax.get_xticks()) > 2 for ax in axes[:5])
    assert all(float(t).is_integer() for t in width_ax.get_yticks())
    # one value everywhere (every caption 12 characters): one bar holding all of them
    assert sorted(p.get_height() for p in axes[4].patches)[-1] == len(widths)
