"""`loraflow.score(...)`: aesthetic and CLIP scores of pictures, with the options of `loraflow score`.

    import loraflow
    report = loraflow.score("outputs/story", clip="models/clip-vit-large", aesthetic="models/aesthetic", gate=6)
    report.folders[0]["aesthetic_mean"], report.passed, report.failure
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.progress import ProgressFn, progress_for
from loraflow.score.run import ScoreOptions, format_table, gate_failure, run_score, write_outputs
from loraflow.score.chart import score_figure


@dataclass
class ScoreReport:
    """The report of `loraflow score` (`report`: the `--json` dict) with its parts by name. Prints as
    the command's table; shows as the bar chart in Jupyter."""

    report: dict
    written: list[Path] = field(default_factory=list)  # the json / chart files asked for

    @property
    def images(self) -> list[dict]:
        return self.report["images"]

    @property
    def folders(self) -> list[dict]:
        return self.report["folders"]

    @property
    def failure(self) -> str | None:
        """The gate's one-line failure, or None when every folder reached it (or no gate was set)."""
        return gate_failure(self.report)

    @property
    def passed(self) -> bool:
        return self.failure is None

    def table(self) -> str:
        return format_table(self.report)

    @property
    def figure(self):
        """The scores as a bar chart (matplotlib Figure), as `chart=` writes it."""
        return score_figure(self.report)

    def _repr_png_(self) -> bytes:
        return self.figure._repr_png_()

    def __str__(self) -> str:
        return self.table()


def score(images: str | Path | Iterable[str | Path], *, progress: bool | ProgressFn = True,
          **options: Any) -> ScoreReport:
    """Score image files and/or folders (a folder: its images, grids and control maps skipped).
    Options as `loraflow score` (`clip`, `aesthetic`, `prompts`, `gate`, `json`, `chart`, ...). A
    missed gate is not an exception: look at `.passed` / `.failure`."""
    items = [images] if isinstance(images, (str, Path)) else list(images)
    opts = ScoreOptions.from_dict({**options, "images": [str(p) for p in items]}, "score")
    with progress_for(progress, "score", "img") as update:
        report = run_score(opts, progress=update)
    return ScoreReport(report, write_outputs(report, opts))
