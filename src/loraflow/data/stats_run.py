"""`loraflow data stats`: counts and distributions (width, height, aspect, file size, caption
length), as a text table and a PNG of histograms -- like data-juicer's analyzer, header reads only."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm  # a widget bar in Jupyter, a text bar in a terminal

from loraflow.images import ImageError, read_info
from loraflow.data.jsonl import read_jsonl
from loraflow.data.options import StatsOptions
from loraflow.data.sources import IMAGE_SUFFIXES
from loraflow.data.training_manifest import read_training_items
from loraflow.errors import InputError

COLUMNS = ("width", "height", "aspect", "file_kb", "caption_chars")


@dataclass
class DatasetStats:
    values: dict[str, list[float]] = field(default_factory=lambda: {c: [] for c in COLUMNS})
    errored: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.values["width"])

    def table(self) -> str:
        head = f"{'':14}{'min':>10}{'p10':>10}{'median':>10}{'p90':>10}{'max':>10}{'mean':>10}"
        rows = [f"{self.count} images, {len(self.errored)} errored", head]
        for name in COLUMNS:
            a = np.asarray(self.values[name], dtype=np.float64)
            if a.size == 0:
                continue
            q = np.percentile(a, [0, 10, 50, 90, 100])
            rows.append(f"{name:14}" + "".join(f"{v:10.4g}" for v in (*q, a.mean())))
        return "\n".join(rows)


def _items(dataset: Path, opts: StatsOptions) -> list[tuple[str, str, str | None]]:
    """(image path, caption, error) for every item of the dataset."""
    if dataset.is_file() and dataset.suffix == ".jsonl":
        out = []
        base = dataset.parent
        for line in read_jsonl(dataset):
            if line.sample is None:
                out.append(("", "", line.error))
                continue
            paths = line.sample.get(opts.image_key) or line.sample.get("file_name") or []
            paths = [paths] if isinstance(paths, str) else paths
            text = line.sample.get(opts.text_key)
            text = "" if text is None else str(text)
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                out.append(("", text, f"line {line.number}: '{opts.image_key}' must be a path or a list of paths, "
                                      f"got {str(paths)[:60]}"))
                continue
            if not paths:
                out.append(("", text, f"line {line.number}: no image"))
            for p in paths:
                out.append((p if os.path.isabs(p) else str(base / p), text, None))
        return out
    if dataset.is_dir() and not any((dataset / n).exists() for n in ("metadata.csv", "metadata.jsonl", "train")) \
            and any(p.suffix.lower() in IMAGE_SUFFIXES for p in dataset.iterdir()):
        return [(str(p), p.with_suffix(".txt").read_text("utf-8", "replace").strip() if p.with_suffix(".txt").is_file() else "", None)
                for p in sorted(dataset.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    try:
        return [(str(i.image_path), i.caption, None) for i in read_training_items(dataset)]
    except InputError:
        if not dataset.exists():
            raise
        raise InputError(f"{dataset}: expected a data-juicer .jsonl, a training folder or a folder of images") from None


def compute_stats(opts: StatsOptions) -> DatasetStats:
    stats = DatasetStats()
    for path, caption, error in tqdm(_items(Path(opts.dataset), opts), desc="stats", unit="img",
                                     disable=not opts.progress, leave=False):
        if error:
            stats.errored.append(error)
            continue
        try:
            info = read_info(path, check_tail=False)
            size = os.path.getsize(path)
        except ImageError as e:
            stats.errored.append(str(e))
            continue
        for key, v in zip(COLUMNS, (info.width, info.height, info.width / info.height, size / 1024, len(caption))):
            stats.values[key].append(v)
    return stats


def default_plot_path(dataset: str) -> Path:
    p = Path(dataset)
    return p / "stats.png" if p.is_dir() else p.with_name(p.stem + "-stats.png")
