"""The score report as a chart (matplotlib): one horizontal bar per image, aesthetic score (0-10,
the gate as a red line) on the left and CLIP score (0-100) on the right, images grouped by
folder with each folder's mean as a dashed line. Unreadable images keep their row, marked."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from loraflow.plots import new_figure, save_figure

AES_MAX, CLIP_MAX = 10.0, 100.0
COLORS = {"aesthetic": "#4682b4", "clip": "#5faa5f", "gate": "#d22828", "mean": "#333333"}


def score_figure(report: dict[str, Any]):
    """A matplotlib Figure of `report` (as returned by `loraflow.score.run.run_score`)."""
    rows = [row for folder in report["folders"] for row in report["images"] if row["folder"] == folder["folder"]]
    labels = [f"{Path(row['folder']).name}/{Path(row['file']).name}" if len(report["folders"]) > 1
              else Path(row["file"]).name for row in rows]
    figure = new_figure(10, 1.2 + 0.28 * max(len(rows), 3))
    aes_ax, clip_ax = figure.subplots(1, 2, sharey=True)
    positions = list(range(len(rows)))
    for ax, key, vmax, title in ((aes_ax, "aesthetic", AES_MAX, "aesthetic score (0-10)"),
                                 (clip_ax, "clip", CLIP_MAX, "CLIP score (0-100)")):
        values = [row[key] if row[key] is not None else 0.0 for row in rows]
        ax.barh(positions, values, color=COLORS[key], height=0.7, label=key)
        ax.set_xlim(0, vmax)
        ax.set_xlabel(title)
        ax.grid(True, axis="x", alpha=0.3)
        for folder in report["folders"]:  # each folder's mean across its own rows
            mine = [i for i, row in enumerate(rows) if row["folder"] == folder["folder"]]
            mean = folder[f"{key}_mean"]
            if mean is not None and mine:
                ax.plot([mean, mean], [mine[0] - 0.45, mine[-1] + 0.45], color=COLORS["mean"], linestyle="--",
                        linewidth=1, label=f"mean {mean:.3g}" if len(report["folders"]) == 1 else None)
        for i, row in enumerate(rows):
            if row["error"]:
                ax.text(0.1, i, "unreadable", va="center", fontsize="small", color="gray")
    aes_ax.set_yticks(positions, labels)
    aes_ax.invert_yaxis()  # first image on top, as in the table
    if report.get("gate") is not None:
        aes_ax.axvline(report["gate"], color=COLORS["gate"], linewidth=1.5, label=f"gate {report['gate']:g}")
    for ax in (aes_ax, clip_ax):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize="small")
    return figure


def save_score_chart(report: dict[str, Any], path: str | Path) -> Path:
    return save_figure(score_figure(report), path)
