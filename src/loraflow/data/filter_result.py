"""What a filter run decides per sample, and the three lists it ends in: kept, rejected (with the op,
stat and reason) or errored (with the error). Shared by the local/Ray run (`filter_run.py`) and the
data-juicer backend (`dj_backend.py`), so both write the same rows."""
from __future__ import annotations

import os
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field

from loraflow.data.ops.base import STATS_KEY, Rejection

LORAFLOW_KEY = "__loraflow__"  # our per-item verdict in the rejected/errored files


@dataclass
class Kept:
    stats: dict
    sample: dict | None = None  # a mapper's rewritten sample; None keeps the input as it was


@dataclass
class Rejected:
    rejection: Rejection  # the op, the stat key, its value and a one-line reason
    stats: dict


@dataclass
class Errored:
    error: str  # one line naming the sample's file or field
    stats: dict


@dataclass
class Keyed:
    """A deduplicator's key for the sample; the caller keeps the first of each key in input order."""

    key: Hashable
    stats: dict


# One verdict per sample per run of ops; stats travel with it because workers are other processes.
Verdict = Kept | Rejected | Errored | Keyed


@dataclass
class FilterResult:
    kept: list[dict] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    errored: list[dict] = field(default_factory=list)
    rejected_by: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)  # "kept" -> path, ... once written

    @property
    def total(self) -> int:
        return len(self.kept) + len(self.rejected) + len(self.errored)

    def summary(self) -> str:
        return (f"{self.total} in: {len(self.kept)} kept + {len(self.rejected)} rejected + "
                f"{len(self.errored)} errored")

    def reject(self, line: int, sample: dict, rejection: Rejection, stats: dict | None = None) -> None:
        """Record a rejected sample (input line `line`), with the stats it had when rejected."""
        self.rejected_by[rejection.op] = self.rejected_by.get(rejection.op, 0) + 1
        with_stats = {**sample, STATS_KEY: stats} if stats is not None else dict(sample)
        self.rejected.append({**with_stats, LORAFLOW_KEY: {"line": line, **asdict(rejection)}})

    def error(self, line: int, sample: dict | None, error: str, raw: str | None = None) -> None:
        """Record an errored sample; a line that is not a sample at all keeps its raw text."""
        row = dict(sample) if sample is not None else {"raw": raw}
        self.errored.append({**row, LORAFLOW_KEY: {"line": line, "error": error}})


def absolute_paths(sample: dict, key: str, base: str) -> dict:
    """data-juicer's `rel2abs`: relative image paths are relative to the dataset file's folder."""
    value = sample.get(key)
    if isinstance(value, list):
        sample[key] = [p if not isinstance(p, str) or os.path.isabs(p) else os.path.join(base, p) for p in value]
    elif isinstance(value, str) and value and not os.path.isabs(value):
        sample[key] = os.path.join(base, value)
    return sample
