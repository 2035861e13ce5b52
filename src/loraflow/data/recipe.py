"""data-juicer recipes (the YAML `dj-process --config` reads), validated before any work starts.

Global keys follow data-juicer 1.6.1 (data_juicer/config/config_all.yaml). Keys that only steer
data-juicer's own machinery (caches, tracer, op fusion ...) are accepted so a recipe runs
unchanged, and ignored. `dataset_path` is relative to the working directory, as in data-juicer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import field_validator

from loraflow import atomic
from loraflow.config import Options, opt, read_mapping_file
from loraflow.data.ops.base import Op
from loraflow.data.ops.registry import build_op
from loraflow.errors import ConfigError


class Recipe(Options):
    """One data-juicer recipe. Field comments are data-juicer's meaning, not a new one."""

    project_name: str = opt("hello_world", "name of the run (only used in messages)")
    dataset_path: str = opt("", "input JSONL, relative to the working directory")
    export_path: str = opt("", "where kept samples go (JSONL); rejected/errored go beside it")
    np: int = opt(4, "number of worker processes")
    text_keys: str | list[str] = opt("text", "sample field(s) holding text; ops use the first")
    image_key: str = opt("images", "sample field holding a list of image paths")
    image_special_token: str = opt("<__dj__image>", "placeholder for an image inside text (kept as is)")
    eoc_special_token: str = opt("<|__dj__eoc|>", "end-of-chunk token (kept as is)")
    keep_stats_in_res_ds: bool = opt(False, "keep `__dj__stats__` in the kept JSONL (data-juicer default: drop)")
    keep_hashes_in_res_ds: bool = opt(False, "keep dedup hashes in the kept JSONL")
    process: list[Any] = opt([], "the ops, in order: `- op_name: {param: value}`")
    # accepted for compatibility, ignored by loraflow
    use_cache: Any = opt(None, "ignored (loraflow keeps no dataset cache)")
    ds_cache_dir: Any = opt(None, "ignored")
    cache_compress: Any = opt(None, "ignored")
    open_tracer: Any = opt(None, "ignored (rejected samples are always written, with the reason)")
    trace_num: Any = opt(None, "ignored")
    op_list_to_trace: Any = opt(None, "ignored")
    op_fusion: Any = opt(None, "ignored")
    executor_type: Any = opt(None, "ignored (use --backend)")
    export_shard_size: Any = opt(None, "ignored (one file)")
    export_in_parallel: Any = opt(None, "ignored")
    suffixes: Any = opt(None, "ignored")
    add_suffix: Any = opt(None, "ignored")
    work_dir: Any = opt(None, "ignored")
    temp_dir: Any = opt(None, "ignored")
    turbo: Any = opt(None, "ignored")
    skip_op_error: Any = opt(None, "ignored")
    debug: Any = opt(None, "ignored")

    @field_validator("np")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v

    @property
    def text_key(self) -> str:
        return self.text_keys if isinstance(self.text_keys, str) else (self.text_keys or ["text"])[0]

    @property
    def rejected_path(self) -> Path:
        return _sibling(self.export_path, "_rejected.jsonl")

    @property
    def errored_path(self) -> Path:
        return _sibling(self.export_path, "_errored.jsonl")

    @property
    def stats_path(self) -> Path:
        # data-juicer's Exporter writes the kept samples' stats to `<export stem>_stats.jsonl`
        return _sibling(self.export_path, "_stats.jsonl")


def _sibling(path: str, suffix: str) -> Path:
    p = Path(path)
    return p.with_name(p.stem + suffix)


def output_paths(export_path: str) -> list[Path]:
    """Every file a filter run writes for `export_path`: the kept samples and their siblings."""
    return [Path(export_path)] + [_sibling(export_path, s) for s in ("_rejected.jsonl", "_errored.jsonl", "_stats.jsonl")]


def check_outputs_apart(recipe: "Recipe", source: str) -> None:
    """A filter must never write over its own input manifest."""
    atomic.check_outputs_apart(output_paths(recipe.export_path), {"dataset_path": recipe.dataset_path},
                               f"{source}: export_path '{recipe.export_path}'")


def load_recipe(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> tuple[Recipe, list[Op]]:
    """Read and validate a recipe and build its ops; every problem is a one-line ConfigError."""
    data = read_mapping_file(path)
    data.update(overrides or {})
    recipe = Recipe.from_dict(data, source=str(path))
    if not recipe.dataset_path:
        raise ConfigError(f"{path}: missing 'dataset_path' (the input JSONL, e.g. metadata.jsonl)")
    if not recipe.export_path:
        raise ConfigError(f"{path}: missing 'export_path' (where kept samples are written, e.g. result.jsonl)")
    if not Path(recipe.export_path).suffix == ".jsonl":
        raise ConfigError(f"{path}: export_path '{recipe.export_path}' must end in .jsonl")
    check_outputs_apart(recipe, str(path))
    return recipe, build_ops(recipe, str(path))


def build_ops(recipe: Recipe, source: str) -> list[Op]:
    ops = []
    for i, entry in enumerate(recipe.process):
        where = f"{source}: process[{i}]"
        if isinstance(entry, str):
            entry = {entry: None}  # `- op_name` with no parameters
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{where}: each step must be a mapping with one op name, e.g. '- image_shape_filter: {{min_width: 512}}'")
        (name, params), = entry.items()
        if params is not None and not isinstance(params, dict):
            raise ConfigError(f"{where} ({name}): parameters must be a mapping, got {type(params).__name__}")
        ops.append(build_op(str(name), params, recipe.text_key, recipe.image_key, where))
    return ops
