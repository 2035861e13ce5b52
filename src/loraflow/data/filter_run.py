"""`loraflow data filter`: run a data-juicer recipe; every input ends up kept, rejected or errored.

Ops run in recipe order. Runs of consecutive filters are evaluated per sample (a sample stops at
the first filter that rejects it, so it has stats only for the ops it reached -- as in
data-juicer, where each op sees only the survivors of the previous one). A deduplicator is a
barrier: hashes are computed in parallel, then kept first-come in input order.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loraflow.data.executors import MAPPERS
from loraflow.data.images import ImageError
from loraflow.data.jsonl import read_jsonl, write_jsonl
from loraflow.data.options import FilterOptions
from loraflow.data.ops.base import STATS_KEY, Op, Rejection, SampleError, SampleImages
from loraflow.data.recipe import Recipe
from loraflow.errors import ConfigError

log = logging.getLogger(__name__)
LORAFLOW_KEY = "__loraflow__"  # our per-item verdict in the rejected/errored files


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


def evaluate(task: Task, batch: list[tuple[int, dict, dict]]) -> list[tuple[str, object, dict]]:
    """Per sample (verdict, payload, stats): ('kept', None) | ('rejected', Rejection) |
    ('errored', message) | ('key', dedup key) | ('kept', rewritten sample) from a mapper.
    Stats (and a mapper's new sample) travel back because workers are other processes."""
    if task.ops[0].kind == "model":
        return _evaluate_model(task, batch)
    if task.ops[0].kind == "mapper":
        return _evaluate_mapper(task, batch)
    out: list[tuple[str, object, dict]] = []
    for _, sample, stats in batch:
        images: dict[str, SampleImages] = {}
        try:
            verdict: tuple[str, object] = ("kept", None)
            for op in task.ops:
                if op.image_key not in images:
                    images[op.image_key] = SampleImages(sample_paths(sample, op.image_key), task.check_tail, task.verify)
                if op.kind == "dedup":
                    verdict = ("key", op.key(images[op.image_key], sample))
                    break
                op.compute(images[op.image_key], sample, stats)
                rejection = op.decide(stats)
                if rejection:
                    verdict = ("rejected", rejection)
                    break
        except (ImageError, SampleError) as e:
            verdict = ("errored", str(e))
        out.append((*verdict, stats))
    return out


def _evaluate_model(task: Task, batch: list[tuple[int, dict, dict]]) -> list[tuple[str, object, dict]]:
    """A model-backed op scores the whole chunk at once (one batched model call)."""
    op = task.ops[0]
    verdicts: list[tuple[str, object] | None] = []
    ready = []
    for _, sample, stats in batch:
        try:
            images = SampleImages(sample_paths(sample, op.image_key), task.check_tail, task.verify)
        except SampleError as e:
            verdicts.append(("errored", str(e)))
            continue
        verdicts.append(None)
        ready.append((images, sample, stats))
    errors = iter(op.compute_batch(ready) if ready else [])
    ready_stats = iter(ready)
    out = []
    for (_, _, stats), verdict in zip(batch, verdicts):
        if verdict is None:
            next(ready_stats)
            error = next(errors)
            verdict = ("errored", error) if error else ("kept", None)
            if error is None:
                rejection = op.decide(stats)
                verdict = ("rejected", rejection) if rejection else ("kept", None)
        out.append((*verdict, stats))
    return out


def _evaluate_mapper(task: Task, batch: list[tuple[int, dict, dict]]) -> list[tuple[str, object, dict]]:
    """A mapper rewrites the whole chunk with one batched model call: ('kept', new sample) or
    ('errored', message); the new sample travels back like the stats do."""
    op = task.ops[0]
    out: list[tuple[str, object, dict] | None] = []
    ready = []
    for _, sample, stats in batch:
        try:
            ready.append((SampleImages(sample_paths(sample, op.image_key), task.check_tail, task.verify), sample))
            out.append(None)
        except SampleError as e:
            out.append(("errored", str(e), stats))
    mapped = iter(op.map_batch(ready) if ready else [])
    for i, (_, _, stats) in enumerate(batch):
        if out[i] is None:
            new = next(mapped)
            out[i] = ("kept", new, stats) if isinstance(new, dict) else ("errored", new, stats)
    return out


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


def absolute_paths(sample: dict, key: str, base: str) -> dict:
    """data-juicer's `rel2abs`: relative image paths are relative to the dataset file's folder."""
    value = sample.get(key)
    if isinstance(value, list):
        sample[key] = [p if not isinstance(p, str) or os.path.isabs(p) else os.path.join(base, p) for p in value]
    elif isinstance(value, str) and value and not os.path.isabs(value):
        sample[key] = os.path.join(base, value)
    return sample


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
            result.errored.append({"raw": line.raw, LORAFLOW_KEY: {"line": line.number, "error": line.error}})
        else:
            alive.append((line.number, absolute_paths(line.sample, recipe.image_key, base), {}))

    _warn_if_image_key_unused(recipe, ops, alive)
    for seg in _segments(ops):
        desc = seg[0].name if len(seg) == 1 else f"{len(seg)} filters"
        seg_workers = 1 if seg[0].kind in ("model", "mapper") else workers  # one model in memory, batched
        verdicts = mapper(evaluate, Task(seg, verify=verify), alive, seg_workers, desc, progress)
        survivors = []
        first_seen: dict[object, int] = {}
        for (number, sample, _), (status, payload, stats) in zip(alive, verdicts):
            if status == "key":
                key = tuple(payload) if isinstance(payload, list) else payload
                if key and key in first_seen:
                    status, payload = "rejected", seg[0].duplicate_of(key, first_seen[key])
                else:
                    if key:
                        first_seen[key] = number
                    status = "kept"
            if status == "kept":  # a mapper's payload is the rewritten sample
                survivors.append((number, payload if isinstance(payload, dict) else sample, stats))
            elif status == "rejected":
                assert isinstance(payload, Rejection)
                result.rejected_by[payload.op] = result.rejected_by.get(payload.op, 0) + 1
                verdict = {"line": number, **asdict(payload)}
                result.rejected.append({**sample, STATS_KEY: stats, LORAFLOW_KEY: verdict})
            else:
                result.errored.append({**sample, LORAFLOW_KEY: {"line": number, "error": payload}})
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
    from loraflow.data.recipe import load_recipe

    recipe, ops = load_recipe(recipe_path)
    if backend == "data-juicer":
        from loraflow.data.dj_backend import run_dj_process

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
