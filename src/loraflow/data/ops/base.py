"""What every op shares: parameter models, the per-sample image accessor, range checks."""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from PIL import Image
from pydantic import model_validator

from loraflow.config import Options, opt
from loraflow.images import ImageError, ImageInfo, load_rgb, read_info
from loraflow.data.text_rules import size_to_bytes

# data-juicer stores per-sample stats under this key (data_juicer/utils/constant.py Fields.stats).
STATS_KEY = "__dj__stats__"
MAXSIZE = sys.maxsize


class OpParams(Options):
    """Keys data-juicer accepts on every op. We use `text_key`/`image_key`; the scheduling keys
    (num_proc, batch_size, accelerator, ...) are accepted so recipes run unchanged, and ignored."""

    text_key: str | None = opt(None, "sample field holding the text (default: the recipe's first text_keys)")
    image_key: str | None = opt(None, "sample field holding the list of image paths (default: the recipe's)")
    num_proc: Any = opt(None, "ignored (loraflow uses the recipe's `np`)")
    batch_size: Any = opt(None, "ignored")
    accelerator: Any = opt(None, "ignored (no model-backed ops)")
    cpu_required: Any = opt(None, "ignored")
    mem_required: Any = opt(None, "ignored")
    turbo: Any = opt(None, "ignored")
    skip_op_error: Any = opt(None, "ignored: loraflow always records per-item errors and goes on")
    stats_export_path: Any = opt(None, "ignored")
    work_dir: Any = opt(None, "ignored")


class FilterParams(OpParams):
    """data-juicer's Filter base: closed intervals by default, optionally reversed."""

    min_closed_interval: bool = opt(True, "min bound is inclusive")
    max_closed_interval: bool = opt(True, "max bound is inclusive")
    reversed_range: bool = opt(False, "keep samples *outside* the range instead")

    @model_validator(mode="after")
    def _min_not_above_max(self):
        # `min_X > max_X` would reject every sample without a word; every min/max pair of every filter
        for name in type(self).model_fields:
            if name.startswith("min_") and f"max_{name[4:]}" in type(self).model_fields:
                low, high = getattr(self, name), getattr(self, f"max_{name[4:]}")
                if isinstance(low, bool) or low is None or high is None:
                    continue
                if _bound(low) > _bound(high):
                    raise ValueError(f"{name} = {low} is above max_{name[4:]} = {high}")
        return self


def _bound(value: Any) -> float:
    return size_to_bytes(value) if isinstance(value, str) else value


class MultiImageParams(FilterParams):
    any_or_all: Literal["any", "all"] = opt("any", "keep if any image passes, or only if all do")


class SampleError(Exception):
    """A sample (not an image) is malformed, e.g. its text field is missing; it becomes errored."""


@dataclass
class Rejection:
    """Why a sample was rejected: the op, the stat key, its value and a one-line reason."""

    op: str
    stat: str | None  # None: the backend does not say (data-juicer's own run)
    value: Any
    reason: str


def in_range(p: FilterParams, value: float, low: float | None, high: float | None) -> bool:
    """data-juicer's `Filter.get_keep_boolean`."""
    ok = True
    if low is not None:
        ok = ok and (value >= low if p.min_closed_interval else value > low)
    if high is not None:
        ok = ok and (value <= high if p.max_closed_interval else value < high)
    return (not ok) if p.reversed_range else ok


def keep_many(p: MultiImageParams, oks: list[bool]) -> bool:
    """A sample with no images is kept (data-juicer: `if len(keep_bools) <= 0: return True`)."""
    if not oks:
        return True
    return any(oks) if p.any_or_all == "any" else all(oks)


def show_range(low: Any, high: Any, p: FilterParams) -> str:
    def fmt(v: Any) -> str:
        return "inf" if v is None or v == MAXSIZE or (isinstance(v, float) and math.isinf(v)) else f"{v:g}" if isinstance(v, float) else str(v)

    left = "[" if p.min_closed_interval else "("
    right = "]" if p.max_closed_interval else ")"
    text = f"{left}{fmt(low)}, {fmt(high)}{right}"
    return f"outside {text}" if p.reversed_range else text


class SampleImages:
    """The images of one sample, opened at most once each: header info or full RGB decode.

    Raises `ImageError` (the sample becomes errored) for a missing or unreadable image.
    """

    def __init__(self, paths: list[str], check_tail: bool = True, verify: bool = False):
        self.paths = paths
        self.check_tail = check_tail
        self.verify = verify  # decode pixels even when only sizes are needed
        self._info: dict[int, ImageInfo] = {}
        self._rgb: dict[int, Image.Image] = {}
        self.notes: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def info(self, i: int) -> ImageInfo:
        if i not in self._info:
            if self.verify:
                im = self.rgb(i)
                self._info[i] = ImageInfo(im.width, im.height, None, "RGB")
            else:
                self._info[i] = read_info(self.paths[i], check_tail=self.check_tail)
        return self._info[i]

    def rgb(self, i: int) -> Image.Image:
        if i not in self._rgb:
            self._rgb[i] = load_rgb(self.paths[i], self.notes)
        return self._rgb[i]

    def file_size(self, i: int) -> int:
        try:
            return os.path.getsize(self.paths[i])
        except OSError as e:
            raise ImageError(f"{self.paths[i]}: {e.strerror or e}") from None


OpKind = Literal["filter", "dedup", "model", "mapper"]


class Op:
    """Base for data-juicer ops: subclasses set `name`, `Params`, `stat_keys`, `kind`, and implement
    the methods `filter_run` calls for their kind (the others keep the NotImplementedError default):

    * "filter": `compute` fills the sample's stats, `decide` keeps (None) or rejects it; runs of
      filters go to worker processes sample by sample.
    * "dedup":  `key` gives the sample's hash key; `duplicate_of` words the rejection of a later
      sample with the same key. The run keeps the first of each key in input order.
    * "model":  `compute_batch` fills the stats of a whole chunk with one batched model call in
      the main process, then `decide` as for a filter.
    * "mapper": `map_batch` rewrites a whole chunk (one batched model call in the main process);
      every sample is kept as rewritten, or errored.
    """

    name: ClassVar[str]
    Params: ClassVar[type[OpParams]]
    kind: ClassVar[OpKind] = "filter"
    stat_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: OpParams, text_key: str, image_key: str):
        self.p = params
        self.text_key = params.text_key or text_key
        self.image_key = params.image_key or image_key

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        """kind "filter": put this op's `stat_keys` into `stats`; raise ImageError / SampleError
        for a sample that cannot be measured (it becomes errored)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no compute")

    def decide(self, stats: dict) -> Rejection | None:
        """kinds "filter" and "model": None keeps the sample, a Rejection says why not."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no decide")

    def key(self, images: SampleImages, sample: dict) -> Hashable:
        """kind "dedup": the sample's key; equal keys are duplicates ('' is never one)."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no key")

    def duplicate_of(self, key: Hashable, first_line: int) -> Rejection:
        """kind "dedup": the Rejection of a sample whose `key` was first seen on input line `first_line`."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no duplicate_of")

    def compute_batch(self, items: list[tuple[SampleImages, dict, dict]]) -> list[str | None]:
        """kind "model": fill the stats of every (images, sample, stats); returns per item None or
        the one-line error that makes it errored."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no compute_batch")

    def map_batch(self, items: list[tuple[SampleImages, dict]]) -> list[dict | str]:
        """kind "mapper": per (images, sample), the rewritten sample, or the one-line error that
        makes it errored."""
        raise NotImplementedError(f"{type(self).__name__} ({self.kind}) has no map_batch")

    def range_verdict(self, stat: str, stats: dict, low: Any, high: Any, label: str,
                      fmt: str = "{:.3f}") -> Rejection | None:
        """data-juicer's check of per-image values against [low, high] with `any_or_all`;
        None keeps the sample, else a Rejection with a one-line reason."""
        p, values = self.p, stats[stat]
        if keep_many(p, [in_range(p, v, low, high) for v in values]):
            return None
        shown = ", ".join(fmt.format(v) for v in values)
        return Rejection(self.name, stat, values, f"{label} {shown} not in {show_range(low, high, p)} ({p.any_or_all})")

    def text_of(self, sample: dict) -> str:
        text = sample.get(self.text_key)
        if not isinstance(text, str):
            raise SampleError(f"field '{self.text_key}' is {'missing' if text is None else type(text).__name__}, expected text")
        return text
