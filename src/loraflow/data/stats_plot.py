"""Histograms drawn with Pillow + numpy (no matplotlib): a 2x3 grid, one panel per stat."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from loraflow.data.stats import COLUMNS, DatasetStats

PANEL_W, PANEL_H, MARGIN, BINS = 420, 260, 36, 30


def draw_histograms(stats: DatasetStats, path: str | Path) -> Path:
    cols, rows = 3, 2
    canvas = Image.new("RGB", (cols * PANEL_W, rows * PANEL_H + 30), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((10, 8), f"{stats.count} images, {len(stats.errored)} errored", fill="black")
    for k, name in enumerate(COLUMNS):
        x0, y0 = (k % cols) * PANEL_W, 30 + (k // cols) * PANEL_H
        _panel(draw, x0, y0, name, np.asarray(stats.values[name], dtype=np.float64))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def _panel(draw: ImageDraw.ImageDraw, x0: int, y0: int, name: str, a: np.ndarray) -> None:
    left, right = x0 + MARGIN, x0 + PANEL_W - 12
    top, bottom = y0 + 22, y0 + PANEL_H - MARGIN
    draw.text((left, y0 + 4), name, fill="black")
    draw.rectangle([left, top, right, bottom], outline=(160, 160, 160))
    if a.size == 0:
        draw.text((left + 8, top + 8), "no data", fill="gray")
        return
    lo, hi = float(a.min()), float(a.max())
    counts, edges = np.histogram(a, bins=BINS, range=(lo, hi if hi > lo else lo + 1))
    bar_w = (right - left) / BINS
    peak = counts.max()
    for i, c in enumerate(counts):
        h = (bottom - top - 4) * c / peak
        draw.rectangle([left + i * bar_w + 1, bottom - h, left + (i + 1) * bar_w - 1, bottom], fill=(66, 120, 200))
    draw.text((left, bottom + 4), f"{edges[0]:.4g}", fill="black")
    label = f"{edges[-1]:.4g}"
    draw.text((right - 7 * len(label), bottom + 4), label, fill="black")
    draw.text((left + 4, top + 2), f"max bin {peak}", fill=(90, 90, 90))
