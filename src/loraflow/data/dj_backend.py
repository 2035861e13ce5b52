"""`--backend data-juicer`: hand the recipe to an installed `dj-process`, then account for every
input. data-juicer writes only the kept samples, so the rest are listed as rejected by
"data-juicer" (it does not say which op) -- the counts still add up."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from loraflow.data.filter_result import FilterResult, absolute_paths
from loraflow.data.jsonl import read_jsonl, write_jsonl
from loraflow.data.ops.base import Rejection
from loraflow.data.recipe import Recipe
from loraflow.errors import ConfigError, LoraflowError


def _key(sample: dict, image_key: str) -> str:
    s = {k: v for k, v in sample.items() if not k.startswith("__dj__")}
    paths = s.get(image_key)
    if isinstance(paths, list):
        s[image_key] = [os.path.abspath(p) if isinstance(p, str) else p for p in paths]
    return json.dumps(s, sort_keys=True, ensure_ascii=False)


def run_dj_process(recipe_path: str | Path, recipe: Recipe, dj_process: str | None, progress: bool) -> FilterResult:
    exe = dj_process or os.environ.get("LORAFLOW_DJ_PROCESS") or shutil.which("dj-process")
    if not exe or not Path(exe).exists():
        raise ConfigError("--backend data-juicer needs dj-process: pip install py-data-juicer "
                          "(or pass --dj-process PATH)")
    proc = subprocess.run([exe, "--config", str(recipe_path)], capture_output=not progress, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["see its output above"]
        raise LoraflowError(f"dj-process failed (exit {proc.returncode}): {tail[0][:300]}")
    kept_keys: dict[str, int] = {}
    for line in read_jsonl(recipe.export_path):
        if line.sample is not None:
            k = _key(line.sample, recipe.image_key)
            kept_keys[k] = kept_keys.get(k, 0) + 1
    result = FilterResult()
    base = os.path.dirname(os.path.abspath(recipe.dataset_path))
    for line in read_jsonl(recipe.dataset_path):
        if line.sample is None:
            result.error(line.number, None, line.error, raw=line.raw)
            continue
        sample = absolute_paths(line.sample, recipe.image_key, base)
        k = _key(sample, recipe.image_key)
        if kept_keys.get(k, 0) > 0:
            kept_keys[k] -= 1
            result.kept.append(sample)
        else:
            result.reject(line.number, sample, Rejection("data-juicer", None, None,
                                                         "not in dj-process's output (it does not say which op)"))
    write_jsonl(recipe.rejected_path, result.rejected)
    write_jsonl(recipe.errored_path, result.errored)
    result.outputs = {"kept": recipe.export_path, "rejected": str(recipe.rejected_path),
                      "errored": str(recipe.errored_path)}
    return result
