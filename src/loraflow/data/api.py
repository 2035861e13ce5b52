"""The data steps as Python calls: `loraflow.data.ingest / filter / export / stats`.

Each takes the same options as its command (`loraflow data ingest --help` lists them; keyword
arguments use the option names or their aliases), runs the same plain function the command runs,
and returns its result object: counts plus the records themselves (`result.kept`, `result.written`).
A bad option raises the command's one-line `loraflow.errors.ConfigError`, naming the key.

    import loraflow
    raw = loraflow.data.ingest("photos/", out="data/input", caption="a photo")
    kept = loraflow.data.filter("examples/recipes/lora-photos.yaml")
    print(kept.summary(), kept.kept[0])
    loraflow.data.export(kept.outputs["kept"], out="data/train-set")
    loraflow.data.stats("data/train-set")          # shows the histograms in a notebook
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.data.options import ExportOptions, FilterOptions, IngestOptions, StatsOptions

__all__ = ["ingest", "filter", "export", "stats", "DatasetReport"]


def ingest(source: str | Path, out: str | Path, **options: Any):
    """Images from a folder, a .jsonl/.csv manifest, `hf:NAME` or `ms:NAME` -> RGB files and
    `OUT/metadata.jsonl`. Returns an `IngestResult` (`.written`, `.skipped`, `.errored`, `.summary()`)."""
    from loraflow.data.ingest_run import ingest as run

    return run(IngestOptions.from_dict({**options, "source": str(source), "out": str(out)}, "ingest"))


def filter(recipe: str | Path, **options: Any):  # noqa: A001 -- the command's name, inside `loraflow.data`
    """Run a data-juicer recipe (YAML). Returns a `FilterResult`: `.kept`, `.rejected` (with the op
    and stat that rejected each), `.errored`, `.rejected_by` (count per op) and `.outputs` (file paths)."""
    from loraflow.data.filter_run import filter_with_options

    return filter_with_options(FilterOptions.from_dict({**options, "config": str(recipe)}, "filter"))


def export(result: str | Path, out: str | Path, **options: Any):
    """Kept samples (a data-juicer JSONL) -> a training folder (`format`: diffsynth, imagefolder,
    kohya). Returns an `ExportResult` (`.folder`, `.written` as (file, caption), `.errored`)."""
    from loraflow.data.export_run import export as run

    return run(ExportOptions.from_dict({**options, "result": str(result), "out": str(out)}, "export"))


@dataclass
class DatasetReport:
    """What `loraflow.data.stats` returns: the numbers, their histograms (a matplotlib Figure) and
    the PNG it saved. Shows as the histograms in Jupyter and as the table in `print()`."""

    stats: Any  # loraflow.data.stats_run.DatasetStats: .values per column, .errored, .count
    figure: Any  # matplotlib.figure.Figure
    plot: Path  # the saved PNG

    @property
    def count(self) -> int:
        return self.stats.count

    def table(self) -> str:
        return self.stats.table()

    def __str__(self) -> str:
        return self.table()

    def _repr_png_(self) -> bytes:
        return self.plot.read_bytes()


def stats(dataset: str | Path, **options: Any) -> DatasetReport:
    """Counts and distributions (width, height, aspect, file size, caption length) of a data-juicer
    JSONL, an exported folder or a folder of images; the histograms are saved to `plot` (default:
    beside the dataset) and returned as a figure."""
    from loraflow.data.stats_plot import stats_with_plot

    opts = StatsOptions.from_dict({**options, "dataset": str(dataset)}, "stats")
    return DatasetReport(*stats_with_plot(opts))
