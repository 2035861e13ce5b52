"""Histograms of a dataset's stats with matplotlib: a 2x3 grid, one panel per column, with units."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from loraflow.data.options import StatsOptions
from loraflow.data.stats_run import COLUMNS, DatasetStats, compute_stats, default_plot_path
from loraflow.plots import new_figure, save_figure

# x-axis label per column: what it is and its unit
LABELS = {
    "width": "width (px)",
    "height": "height (px)",
    "aspect": "aspect ratio (width / height)",
    "file_kb": "file size (KiB)",
    "caption_chars": "caption length (characters)",
}
BINS = 30


def histogram_figure(stats: DatasetStats):
    """One histogram per stat (number of images per bin); an empty column says "no data"."""
    from matplotlib.ticker import MaxNLocator

    figure = new_figure(12, 6.5)
    axes = figure.subplots(2, 3).ravel()
    figure.suptitle(f"{stats.count} images, {len(stats.errored)} errored")
    for ax, name in zip(axes, COLUMNS):
        values = np.asarray(stats.values[name], dtype=np.float64)
        ax.set_xlabel(LABELS[name])
        ax.set_ylabel("images")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts: no 2.5 images
        ax.grid(True, alpha=0.3)
        if values.size == 0:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        lo, hi = float(values.min()), float(values.max())
        if hi > lo:
            ax.hist(values, bins=BINS, range=(lo, hi), color="#4278c8", edgecolor="white")
        else:  # one value everywhere (all 1024 px): one bar centred on it, not a zero-width range
            ax.hist(values, bins=1, range=(lo - 0.25, lo + 0.25), color="#4278c8", edgecolor="white")
            ax.set_xlim(lo - 1, lo + 1)
        ax.axvline(float(np.median(values)), color="#c03030", linestyle="--", linewidth=1,
                   label=f"median {np.median(values):.4g}")
        ax.legend(loc="upper right", fontsize="small")
    axes[-1].axis("off")  # 5 columns on a 2x3 grid: the sixth panel holds nothing
    return figure


def draw_histograms(stats: DatasetStats, path: str | Path):
    """Save the histograms as a PNG; returns (figure, path)."""
    figure = histogram_figure(stats)
    return figure, save_figure(figure, path)


def stats_with_plot(opts: StatsOptions):
    """What `loraflow data stats` does: the numbers, their histograms and the saved PNG's path."""
    stats = compute_stats(opts)
    figure, path = draw_histograms(stats, opts.plot or default_plot_path(opts.dataset))
    return stats, figure, path
