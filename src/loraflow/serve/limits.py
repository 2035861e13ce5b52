"""Bounds on the work one request may ask for, checked when it is submitted (HTTP 422 naming the
field), so a job the machine cannot hold never reaches the worker: pixels per image, denoising
steps, images per call, grid size, workflow size, and how deeply a JSON body may nest.

    limits = Limits.from_options(options)
    check_job_limits("generate", payload, limits)   # raises Invalid("key 'width' ...", "width")
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from loraflow.serve.options import ServeOptions
from loraflow.serve.validation import Invalid


def _serve_default(name: str) -> int:
    """The default of ServeOptions' `--max-...` flag: each bound is described and defaulted there once."""
    return ServeOptions.model_fields[name].default


@dataclass(frozen=True)
class Limits:
    """The bounds of `ServeOptions` (its flags' help says what each one bounds); `Limits()` is a
    server started with no flags."""

    max_pixels: int = _serve_default("max_pixels")
    max_steps: int = _serve_default("max_steps")
    max_batch: int = _serve_default("max_batch")
    max_images: int = _serve_default("max_images")
    max_grid_pixels: int = _serve_default("max_grid_pixels")
    max_scenes: int = _serve_default("max_scenes")
    max_train_steps: int = _serve_default("max_train_steps")
    max_workflow_nodes: int = _serve_default("max_workflow_nodes")
    max_json_depth: int = 64  # nesting of any JSON body; deeper is refused before it is walked (no flag)

    @classmethod
    def from_options(cls, options) -> "Limits":
        return cls(**{k: getattr(options, k) for k in cls.__dataclass_fields__ if hasattr(options, k)})


def parse_json(raw: bytes, where: str, max_depth: int = Limits.max_json_depth) -> Any:
    """JSON text -> value; invalid or too deeply nested -> Invalid (a 4xx, never a RecursionError)."""
    try:
        value = json.loads(raw or b"null")
    except RecursionError:
        raise Invalid(f"{where} is nested too deeply (more than {max_depth} levels)") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Invalid(f"{where} is not valid JSON: {e}") from None
    if json_depth(value) > max_depth:
        raise Invalid(f"{where} is nested too deeply (more than {max_depth} levels)")
    return value


def json_depth(value: Any) -> int:
    """Nesting depth of lists/objects, counted without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def _at_most(value: Any, limit: int, field: str, option: str) -> None:
    if isinstance(value, (int, float)) and value > limit:
        raise Invalid(f"key '{field}' = {value}: this server allows at most {limit} (--{option.replace('_', '-')})",
                      field)


def _pixels(width: Any, height: Any, limit: int, field: str) -> None:
    if isinstance(width, int) and isinstance(height, int) and width * height > limit:
        raise Invalid(f"key '{field}' = {width}x{height} = {width * height} pixels: this server allows at most "
                      f"{limit} pixels per image (--max-pixels)", field)


def _sampling(cfg: dict, limits: Limits, prefix: str = "") -> None:
    _pixels(cfg.get("width") or 1024, cfg.get("height") or 1024, limits.max_pixels, prefix + "width")
    _at_most(cfg.get("num_inference_steps"), limits.max_steps, prefix + "num_inference_steps", "max_steps")
    _at_most(cfg.get("batch_size"), limits.max_batch, prefix + "batch_size", "max_batch")
    _at_most(cfg.get("num_images"), limits.max_images, prefix + "num_images", "max_images")


def check_job_limits(kind: str, payload: dict, limits: Limits) -> None:
    """Raises Invalid naming the first field over its limit (payloads are the validated job bodies)."""
    if kind == "generate":
        _sampling(payload, limits)
    elif kind == "storyboard":
        _storyboard(payload["config"], payload["story"], limits)
    elif kind == "train":
        _pixels(payload.get("resolution") or 1024, payload.get("resolution") or 1024, limits.max_pixels, "resolution")
        _at_most(payload.get("batch_size"), limits.max_batch, "batch_size", "max_batch")
        _at_most(payload.get("max_steps"), limits.max_train_steps, "max_steps", "max_train_steps")
        _at_most(payload.get("validation_steps"), limits.max_steps, "validation_steps", "max_steps")


def _storyboard(cfg: dict, story: dict, limits: Limits) -> None:
    defaults = story.get("defaults") or {}
    _sampling(cfg, limits, "")
    _sampling(defaults, limits, "story.defaults.")
    scenes = len(story.get("scenes") or [])
    _at_most(scenes, limits.max_scenes, "story.scenes", "max_scenes")
    _at_most(scenes * (cfg.get("best_of") or 1), limits.max_images, "best_of", "max_images")
    grid = story.get("grid") or {}
    width = cfg.get("width") or defaults.get("width") or 1024
    height = cfg.get("height") or defaults.get("height") or 1024
    columns = max(1, grid.get("columns") or 1)
    rows = -(-max(scenes, 1) // columns)
    grid_w = cfg.get("grid_width") or grid.get("width") or columns * width  # None: the natural size
    grid_h = cfg.get("grid_height") or grid.get("height") or rows * height
    if grid_w * grid_h > limits.max_grid_pixels:
        field = "grid_width" if cfg.get("grid_width") else "story.grid.width"
        raise Invalid(f"key '{field}': a {grid_w}x{grid_h} grid is {grid_w * grid_h} pixels; this server allows at "
                      f"most {limits.max_grid_pixels} (--max-grid-pixels)", field)


def check_workflow_limits(prompt: dict, limits: Limits) -> tuple[str, str] | None:
    """(node id, message) of the first ComfyUI node over a limit, None when all fit. Inputs are
    looked up by their ComfyUI names, so every node with width/height, steps or batch_size is bounded."""
    if len(prompt) > limits.max_workflow_nodes:
        return "", f"the workflow has {len(prompt)} nodes; this server allows at most {limits.max_workflow_nodes}"
    for nid, node in prompt.items():
        inputs = node.get("inputs") or {}
        try:
            _pixels(inputs.get("width"), inputs.get("height"), limits.max_pixels, "width")
            _at_most(inputs.get("steps"), limits.max_steps, "steps", "max_steps")
            _at_most(inputs.get("batch_size"), limits.max_batch, "batch_size", "max_batch")
        except Invalid as e:
            return str(nid), str(e)
    return None
