"""`loraflow data filter`: run a data-juicer recipe; every input ends up kept, rejected or errored.

Ops run in recipe order. Runs of consecutive filters are evaluated per sample (a sample stops at
the first filter that rejects it, so it has stats only for the ops it reached -- as in
data-juicer, where each op sees only the survivors of the previous one). A deduplicator is a
barrier: hashes are computed in parallel, then kept first-come in input order.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from loraflow.data.dj_backend import run_dj_process
from loraflow.data.executors import MAPPERS
from loraflow.data.filter_result import (Errored, FilterResult, Kept, Keyed, Rejected, Verdict,
                                         absolute_paths)
from loraflow.data.jsonl import read_jsonl, write_jsonl
from loraflow.data.ops.base import STATS_KEY, Op, SampleError, SampleImages
from loraflow.data.options import FilterOptions
from loraflow.data.recipe import Recipe, load_recipe
from loraflow.errors import ConfigError
from loraflow.images import ImageError

log = logging.getLogger(__name__)


@dataclass
class Task:
    """One unit of work shipped to workers (must pickle): a run of filters, or one deduplicator."""

    ops: list[Op]
    check_tail: bool = True
    verify: bool = False


def sample_paths(sample: dict, key: str) -> list[str]:
    value = sample.get(key)
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        return value
    raise SampleError(f"field '{key}' must be a list of image paths, got {type(value).__name__}")


def evaluate(task: Task, batch: list[tuple[int, dict, dict]]) -> list[Verdict]:
    """One verdict per (line, sample, stats) of `batch`, in order."""
    if task.ops[0].kind == "model":
        return _evaluate_model(task, batch)
    if task.ops[0].kind == "mapper":
        return _evaluate_mapper(task, batch)
    return [_evaluate_one(task, sample, stats) for _, sample, stats in batch]


def _evaluate_one(task: Task, sample: dict, stats: dict) -> Verdict:
    """Filters in order until one rejects; a deduplicator ends the run with the sample's key."""
    images: dict[str, SampleImages] = {}
    try:
        for op in task.ops:
            if op.image_key not in images:
                images[op.image_key] = SampleImages(sample_paths(sample, op.image_key), task.check_tail, task.verify)
            if op.kind == "dedup":
                return Keyed(op.key(images[op.image_key], sample), stats)
            op.compute(images[op.image_key], sample, stats)
            rejection = op.decide(stats)
            if rejection:
                return Rejected(rejection, stats)
    except (ImageError, SampleError) as e:
        return Errored(str(e), stats)
    return Kept(stats)


def _evaluate_model(task: Task, batch: list[tuple[int, dict, dict]]) -> list[Verdict]:
    """A model-backed op scores the whole chunk at once (one batched model call)."""
    op = task.ops[0]

    def verdict(error: str | None, stats: dict) -> Verdict:
        rejection = op.decide(stats) if error is None else None
        return Errored(error, stats) if error else Rejected(rejection, stats) if rejection else Kept(stats)

    return _batched(task, batch, op.compute_batch, verdict)


def _evaluate_mapper(task: Task, batch: list[tuple[int, dict, dict]]) -> list[Verdict]:
    """A mapper rewrites the whole chunk with one batched model call: each sample is kept as its
    rewritten self, or errored; the new sample travels back like the stats do."""
    op = task.ops[0]
    return _batched(task, batch, lambda ready: op.map_batch([(images, sample) for images, sample, _ in ready]),
                    lambda new, stats: Kept(stats, sample=new) if isinstance(new, dict) else Errored(new, stats))


def _batched(task: Task, batch: list[tuple[int, dict, dict]], call: Callable[[list], list],
             verdict: Callable[[Any, dict], Verdict]) -> list[Verdict]:
    """The one batched model call of a chunk: a sample whose images cannot be opened is errored
    there; the rest go to `call` together as (images, sample, stats), and each result becomes
    `verdict(result, stats)`, in the chunk's order."""
    op = task.ops[0]
    verdicts: list[Verdict | None] = []  # None: waits for the batched call
    ready = []
    for _, sample, stats in batch:
        try:
            images = SampleImages(sample_paths(sample, op.image_key), task.check_tail, task.verify)
        except SampleError as e:
            verdicts.append(Errored(str(e), stats))
            continue
        verdicts.append(None)
        ready.append((images, sample, stats))
    results = iter(call(ready) if ready else [])
    return [verdict(next(results), stats) if v is None else v for (_, _, stats), v in zip(batch, verdicts)]


def _segments(ops: list[Op]) -> list[list[Op]]:
    segs: list[list[Op]] = []
    for op in ops:
        if op.kind in ("dedup", "model", "mapper"):  # each alone: a barrier, or one batched model call
            segs.append([op])
        elif segs and segs[-1][0].kind == "filter":
            segs[-1].append(op)
        else:
            segs.append([op])
    return segs


def run_filter(recipe: Recipe, ops: list[Op], backend: str = "local", np: int | None = None,
               verify: bool = False, progress: bool = True) -> FilterResult:
    """Run the ops over `recipe.dataset_path`; returns the three lists (nothing written)."""
    workers = np or recipe.np
    mapper = MAPPERS[backend]
    result = FilterResult()
    base = os.path.dirname(os.path.abspath(recipe.dataset_path))
    alive: list[tuple[int, dict, dict]] = []
    for line in read_jsonl(recipe.dataset_path):
        if line.sample is None:
            result.error(line.number, None, line.error, raw=line.raw)
        else:
            alive.append((line.number, absolute_paths(line.sample, recipe.image_key, base), {}))

    _warn_if_image_key_unused(recipe, ops, alive)
    for seg in _segments(ops):
        desc = seg[0].name if len(seg) == 1 else f"{len(seg)} filters"
        seg_workers = 1 if seg[0].kind in ("model", "mapper") else workers  # one model in memory, batched
        verdicts = mapper(evaluate, Task(seg, verify=verify), alive, seg_workers, desc, progress)
        survivors = []
        first_seen: dict[object, int] = {}
        for (number, sample, _), verdict in zip(alive, verdicts):
            if isinstance(verdict, Keyed):  # first come in input order wins, whatever the worker order
                key = tuple(verdict.key) if isinstance(verdict.key, list) else verdict.key
                if key and key in first_seen:
                    verdict = Rejected(seg[0].duplicate_of(key, first_seen[key]), verdict.stats)
                else:
                    if key:
                        first_seen[key] = number
                    verdict = Kept(verdict.stats)
            if isinstance(verdict, Kept):  # a mapper's verdict carries the rewritten sample
                survivors.append((number, verdict.sample if verdict.sample is not None else sample, verdict.stats))
            elif isinstance(verdict, Rejected):
                result.reject(number, sample, verdict.rejection, verdict.stats)
            else:
                result.error(number, sample, verdict.error)
        alive = survivors

    result.kept = [{**sample, STATS_KEY: stats} for _, sample, stats in alive]
    return result


def _warn_if_image_key_unused(recipe: Recipe, ops: list[Op], alive: list[tuple[int, dict, dict]]) -> None:
    """A sample without images is kept (data-juicer's rule), so a wrong `image_key` silently keeps
    everything; say so when no sample has the field at all."""
    if not alive or not any(op.name.startswith("image_") for op in ops):
        return
    if any(op.image_key in sample for _, sample, _ in alive for op in ops):
        return
    fields = sorted({k for _, sample, _ in alive[:100] for k, v in sample.items() if isinstance(v, (list, str))})
    log.warning("no sample has the field '%s' (the recipe's image_key; data-juicer's default is 'images'), so "
                "image ops see no images and keep every sample; fields present: %s", ops[0].image_key, ", ".join(fields))


def write_result(recipe: Recipe, ops: list[Op], result: FilterResult) -> None:
    """Write kept / rejected / errored JSONL beside `export_path`, and the stats file.

    data-juicer's Exporter drops `__dj__stats__` from the kept file unless
    `keep_stats_in_res_ds: true`, and writes the kept samples' stats to `<stem>_stats.jsonl`
    (data_juicer/core/exporter.py `_export_impl`); we do the same. Dedup hashes are never kept.
    """
    kept = result.kept if recipe.keep_stats_in_res_ds else [
        {k: v for k, v in row.items() if k != STATS_KEY} for row in result.kept]
    write_jsonl(recipe.export_path, kept)
    if any(op.kind in ("filter", "model") for op in ops):
        write_jsonl(recipe.stats_path, ({STATS_KEY: row[STATS_KEY]} for row in result.kept))
    write_jsonl(recipe.rejected_path, result.rejected)
    write_jsonl(recipe.errored_path, result.errored)


def filter_dataset(recipe_path: str | Path, backend: str = "local", np: int | None = None,
                   verify: bool = False, progress: bool = True, dj_process: str | None = None) -> FilterResult:
    """Load the recipe (all config errors come here, before any work), run it, write the outputs."""
    recipe, ops = load_recipe(recipe_path)
    if backend == "data-juicer":
        return run_dj_process(recipe_path, recipe, dj_process, progress)
    result = run_filter(recipe, ops, backend=backend, np=np, verify=verify, progress=progress)
    write_result(recipe, ops, result)
    result.outputs = {"kept": recipe.export_path, "rejected": str(recipe.rejected_path),
                      "errored": str(recipe.errored_path)}
    return result


def filter_with_options(opts: FilterOptions) -> FilterResult:
    """`loraflow data filter` and `loraflow.data.filter`: the options checked, then the recipe run."""
    if not opts.config:
        raise ConfigError("filter: give --config RECIPE.yaml (a data-juicer recipe)")
    return filter_dataset(opts.config, backend=opts.backend, np=opts.np, verify=opts.verify_images,
                          progress=opts.progress, dj_process=opts.dj_process)
