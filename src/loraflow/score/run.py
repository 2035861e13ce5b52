"""`loraflow score`: score image files or folders, summarise per folder, check a gate.

The report (also the `--json` file)::

    {"clip": "...", "aesthetic": "...", "gate": 6.0,
     "images":  [{"file", "folder", "prompt", "aesthetic", "clip", "error"}, ...],
     "folders": [{"folder", "images", "errors", "aesthetic_mean", "aesthetic_min", "clip_mean", "clip_min"}, ...]}

Every input image ends up in `images`: scored, or with its `error` (an unreadable file).
"""
from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from loraflow.atomic import atomic_write_text
from loraflow.config import Options, opt
from loraflow.errors import ConfigError, InputError
from loraflow.images import ImageError, load_rgb
from loraflow.score.chart import save_score_chart
from loraflow.score.prompts import prompts_for
from loraflow.score.scorer import Scorer, reduce_scores

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
GATE_EXIT_CODE = 3  # `--gate` not reached (2 is any other error)


class ScoreOptions(Options):
    """`loraflow score IMAGES_OR_DIR ... --clip PATH --aesthetic PATH`."""

    images: list[str] = opt([], "image files and/or folders (a folder: its images, not recursive)", cli=False)
    prompts: str | None = opt(None, "story.json (storyboard output) or story .yaml/.json giving each image's "
                              "prompt; default: the PNG's own A1111 parameters text")
    clip: str | None = opt(None, "local transformers CLIP folder for the CLIP score (and the aesthetic head), "
                           "e.g. clip-vit-large-patch14")
    aesthetic: str | None = opt(None, "simple-aesthetics-predictor folder, or an aesthetic head "
                                ".safetensors (improved-aesthetic-predictor MLP or linear) read over --clip")
    gate: float | None = opt(None, "exit with code 3 when a folder's mean aesthetic score is below this (e.g. 6)")
    json_out: str | None = opt(None, "write the report as JSON here", aliases=("json",))
    chart: str | None = opt(None, "write a PNG bar chart of the scores here")
    exclude: list[str] = opt(["grid.png", "*.control*.png"], "file-name patterns skipped inside folders "
                             "(storyboard grids and control images are not scenes)")
    device: str = opt("auto", "cuda, cpu, cuda:1 ... (auto: cuda when available)")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = opt("auto", "model dtype (auto: float16 on cuda)")
    batch_size: int = opt(16, "images per forward pass", ge=1)
    allow_pickle: bool = opt(False, "allow .pth/.bin weights (read with torch.load(weights_only=True))")


ProgressFn = Callable[[int, int], None]


def collect_images(inputs: list[str], exclude: list[str]) -> list[Path]:
    """Files as given, folders expanded to their sorted images; a missing path is an error."""
    if not inputs:
        raise ConfigError("no images: pass image files or folders")
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(fnmatch.fnmatch(p.name, pat) for pat in exclude))
            if not found:
                raise InputError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise InputError(f"image or folder not found: {path}")
    return list(dict.fromkeys(paths))


def run_score(options: ScoreOptions, scorer: Scorer | None = None,
              progress: ProgressFn | None = None) -> dict[str, Any]:
    """Score every image of `options.images`; returns the report (see the module docstring)."""
    if options.gate is not None and options.aesthetic is None and (scorer is None or scorer.aesthetic is None):
        raise ConfigError("--gate checks the mean aesthetic score: pass --aesthetic too")
    paths = collect_images(options.images, options.exclude)
    prompts = prompts_for(paths, options.prompts)
    if scorer is None:
        scorer = Scorer.load(options.clip, options.aesthetic, options.device, options.dtype,
                             options.allow_pickle, options.batch_size)

    rows = [{"file": str(p), "folder": str(p.parent), "prompt": prompt, "aesthetic": None, "clip": None, "error": None}
            for p, prompt in zip(paths, prompts)]
    if progress:
        progress(0, len(rows))
    for start in range(0, len(rows), options.batch_size):
        chunk = rows[start:start + options.batch_size]
        images, scored = [], []
        for row in chunk:
            try:  # decoded as the data filters and training decode (alpha on white, EXIF rotation)
                images.append(load_rgb(row["file"]))
                scored.append(row)
            except ImageError as e:  # unreadable/corrupt: reported, not dropped
                row["error"] = f"cannot read image: {e}"
        for row, result in zip(scored, scorer.score(images, [r["prompt"] for r in scored])):
            row.update(result.to_dict())
        if progress:
            progress(min(start + options.batch_size, len(rows)), len(rows))
    return {"clip": options.clip, "aesthetic": options.aesthetic, "gate": options.gate,
            "images": rows, "folders": summarise(rows)}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per folder (in first-seen order): image and error counts, mean and min of each score."""
    folders: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        folders.setdefault(row["folder"], []).append(row)
    out = []
    for folder, items in folders.items():
        summary: dict[str, Any] = {"folder": folder, "images": len(items),
                                   "errors": sum(r["error"] is not None for r in items)}
        for key in ("aesthetic", "clip"):
            values = [r[key] for r in items]
            summary[f"{key}_mean"] = reduce_scores(values, "avg")
            summary[f"{key}_min"] = reduce_scores(values, "min")
        out.append(summary)
    return out


def gate_failure(report: dict[str, Any]) -> str | None:
    """One line naming the first folder whose mean aesthetic score is below the gate, or None."""
    gate = report["gate"]
    if gate is None:
        return None
    short = [f for f in report["folders"] if f["aesthetic_mean"] is None or f["aesthetic_mean"] < gate]
    if not short:
        return None
    first = short[0]
    mean = "no score" if first["aesthetic_mean"] is None else f"{first['aesthetic_mean']:.3f}"
    more = f" (+{len(short) - 1} more folder{'s' if len(short) > 2 else ''})" if len(short) > 1 else ""
    return f"gate {gate:g} not reached: mean aesthetic score of {first['folder']} is {mean}{more}"


def format_table(report: dict[str, Any]) -> str:
    """Per folder: its images, then the folder's mean and min, as fixed-width text."""
    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    width = max([len(Path(r["file"]).name) for r in report["images"]] + [12])
    lines = [f"{'image':<{width}}  {'aesthetic':>9}  {'clip':>7}"]
    for f in report["folders"]:
        lines.append(f"{f['folder']}/  ({f['images']} images" + (f", {f['errors']} errors)" if f["errors"] else ")"))
        for row in (r for r in report["images"] if r["folder"] == f["folder"]):
            tail = f"  error: {row['error']}" if row["error"] else ("" if row["prompt"] else "  (no prompt)")
            lines.append(f"{Path(row['file']).name:<{width}}  {num(row['aesthetic']):>9}  {num(row['clip']):>7}{tail}")
        lines.append(f"{'  mean':<{width}}  {num(f['aesthetic_mean']):>9}  {num(f['clip_mean']):>7}")
        lines.append(f"{'  min':<{width}}  {num(f['aesthetic_min']):>9}  {num(f['clip_min']):>7}")
    return "\n".join(lines)


def write_outputs(report: dict[str, Any], options: ScoreOptions) -> list[Path]:
    """The `--json` report and the `--chart` PNG, each written atomically."""
    written = []
    if options.json_out:
        atomic_write_text(options.json_out, json.dumps(report, ensure_ascii=False, indent=2))
        written.append(Path(options.json_out))
    if options.chart:
        save_score_chart(report, options.chart)
        written.append(Path(options.chart))
    return written
