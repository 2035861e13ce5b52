"""Where per-sample work runs: in this process, in `np` worker processes, or on Ray Data.

All three call the same `evaluate(task, batch)`, so they give the same answers by construction.
"""
from __future__ import annotations

import math
import pickle
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

from tqdm.auto import tqdm  # a widget bar in Jupyter, a text bar in a terminal

from loraflow.errors import ConfigError

Evaluate = Callable[[Any, list], list]


def _chunk_size(n: int, workers: int) -> int:
    return max(16, min(512, math.ceil(n / max(1, workers * 8))))


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def map_local(evaluate: Evaluate, task: Any, items: list, np: int, desc: str, progress: bool) -> list:
    """Serial for small inputs or np=1, else a process pool fed in chunks (order preserved)."""
    out: list = []
    size = _chunk_size(len(items), np)
    with tqdm(total=len(items), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        if np <= 1 or len(items) < 2 * size:
            for chunk in _chunks(items, size):
                out.extend(evaluate(task, chunk))
                bar.update(len(chunk))
            return out
        with ProcessPoolExecutor(max_workers=np) as pool:
            for res in pool.map(partial(evaluate, task), _chunks(items, size)):
                out.extend(res)
                bar.update(len(res))
    return out


def map_ray(evaluate: Evaluate, task: Any, items: list, np: int, desc: str, progress: bool) -> list:
    """The same work as Ray Data `map_batches` (starts a local Ray if none is running)."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--backend ray needs Ray Data: pip install 'loraflow[ray]'") from None
    if not ray.is_initialized():
        ray.init(num_cpus=np, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    rows = [{"i": i, "item": pickle.dumps(item)} for i, item in enumerate(items)]

    def run_batch(batch: dict) -> dict:
        chunk = [pickle.loads(b) for b in batch["item"]]
        return {"i": batch["i"], "out": [pickle.dumps(o) for o in evaluate(task, chunk)]}

    ds = ray.data.from_items(rows).map_batches(run_batch, batch_size=_chunk_size(len(items), np))
    results = sorted(ds.take_all(), key=lambda r: int(r["i"]))
    return [pickle.loads(r["out"]) for r in results]


MAPPERS = {"local": map_local, "ray": map_ray}
