"""`loraflow data ingest`: any image source -> RGB files + `metadata.jsonl` in data-juicer's layout.

Output (what the seed writes, one line per image): `{"text": caption, "image": [absolute path]}`,
plus `skipped.jsonl` (duplicates, non-image files) and `errored.jsonl` (unreadable items), so
inputs = written + skipped + errored, always.
"""
from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm  # a widget bar in Jupyter, a text bar in a terminal

from loraflow.atomic import atomic_save_image
from loraflow.data.executors import map_local
from loraflow.images import ImageError, load_rgb, to_rgb
from loraflow.data.jsonl import write_jsonl
from loraflow.data.options import IngestOptions
from loraflow.data.sources import RawItem, iter_source
from loraflow.errors import ConfigError


CHUNK = 512  # items decoded per round (bounds memory for hub datasets)


@dataclass
class IngestResult:
    written: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    errored: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.written) + len(self.skipped) + len(self.errored)
        return f"{n} in: {len(self.written)} written + {len(self.skipped)} skipped + {len(self.errored)} errored"


@dataclass
class Written:
    path: str  # absolute path of the saved RGB image
    digest: str  # SHA-1 of size + pixels: equal pictures in other files or formats match
    notes: list[str]


@dataclass
class Skipped:
    reason: str


@dataclass
class Failed:
    error: str  # one line naming the item


# What saving one item came to; sent back from worker processes.
SaveOutcome = Written | Skipped | Failed


@dataclass
class _SaveTask:
    out_dir: str
    image_format: str
    quality: int


def _picture_to_rgb(picture: Any, notes: list[str]) -> Image.Image:
    """A hub row's image: a PIL image, or datasets' {"bytes": ..., "path": ...} dict."""
    if isinstance(picture, dict) and picture.get("bytes"):
        picture = Image.open(io.BytesIO(picture["bytes"]))
    elif isinstance(picture, dict) and picture.get("path"):
        return load_rgb(picture["path"], notes)
    if not isinstance(picture, Image.Image):
        raise ImageError(f"expected an image, got {type(picture).__name__}")
    frames = getattr(picture, "n_frames", 1)
    if frames > 1:
        picture.seek(0)
        notes.append(f"animated image with {frames} frames: took the first frame")
    return to_rgb(picture)


def _save_batch(task: _SaveTask, batch: list[tuple[int, RawItem]]) -> list[SaveOutcome]:
    """Decode, convert to RGB, hash the pixels, save. Returns one outcome per item."""
    out: list[SaveOutcome] = []
    for index, item in batch:
        if item.skip:
            out.append(Skipped(item.skip))
            continue
        if item.error:
            out.append(Failed(item.error))
            continue
        notes: list[str] = []
        try:
            rgb = load_rgb(item.path, notes) if item.path else _picture_to_rgb(item.picture, notes)
            digest = hashlib.sha1(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
            dest = Path(task.out_dir) / f"{index:06d}.{task.image_format}"
            # durable=False: one fsync per image would dominate a large ingest; a rerun redoes it
            atomic_save_image(rgb, dest, durable=False, format="JPEG" if task.image_format == "jpg" else "PNG",
                              quality=task.quality)
            out.append(Written(str(dest.resolve()), digest, notes))
        except ImageError as e:
            msg = str(e)
            out.append(Failed(msg if item.ref in msg else f"{item.ref}: {msg}"))
        except (OSError, ValueError) as e:  # e.g. a picture that cannot be written as JPEG
            out.append(Failed(f"{item.ref}: cannot convert/save: {e}"))
    return out


def ingest(opts: IngestOptions, hub_loader: Callable[..., Any] | None = None) -> IngestResult:
    if not opts.source:
        raise ConfigError("ingest: give a SOURCE (folder, .jsonl/.csv manifest, hf:NAME or ms:NAME)")
    if not opts.out:
        raise ConfigError("ingest: give --out DIR")
    out = Path(opts.out)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    task = _SaveTask(str(images_dir), opts.image_format, opts.quality)
    result = IngestResult()
    first: dict[str, str] = {}
    source = enumerate(iter_source(opts, hub_loader))
    with tqdm(desc="ingest", unit="img", disable=not opts.progress) as bar:
        # in chunks, so a hub dataset is never held in memory whole
        while chunk := list(itertools.islice(source, CHUNK)):
            in_memory = any(item.picture is not None for _, item in chunk)  # hub pictures stay in this process
            outcomes = map_local(_save_batch, task, chunk, 1 if in_memory else opts.np, "ingest", False)
            _collect(chunk, outcomes, opts, result, first)
            bar.update(len(chunk))
    write_jsonl(out / "metadata.jsonl", result.written)
    write_jsonl(out / "skipped.jsonl", result.skipped)
    write_jsonl(out / "errored.jsonl", result.errored)
    return result


def _collect(chunk: list[tuple[int, RawItem]], outcomes: list[SaveOutcome], opts: IngestOptions,
             result: IngestResult, first: dict[str, str]) -> None:
    """Sort outcomes into written / skipped / errored; later copies of the same pixels are skipped."""
    for (_, item), outcome in zip(chunk, outcomes):
        if isinstance(outcome, Skipped):
            result.skipped.append({"ref": item.ref, "reason": outcome.reason})
        elif isinstance(outcome, Failed):
            result.errored.append({"ref": item.ref, "error": outcome.error})
        else:
            path, digest, notes = outcome.path, outcome.digest, outcome.notes
            caption, problem = _caption(item, opts)
            if problem:
                Path(path).unlink(missing_ok=True)
                result.errored.append({"ref": item.ref, "error": problem})
            elif digest in first and not opts.keep_duplicates:
                Path(path).unlink(missing_ok=True)
                result.skipped.append({"ref": item.ref, "reason": f"duplicate: same pixels as {first[digest]}"})
            else:
                first.setdefault(digest, item.ref)
                result.written.append({"text": caption, "image": [path]})
                result.notes.extend(f"{item.ref}: {n}" for n in notes)


def _caption(item: RawItem, opts: IngestOptions) -> tuple[str, str | None]:
    if item.caption is not None:
        return item.caption, None
    if opts.caption is not None:
        return opts.caption, None
    if opts.caption_from == "txt":
        return "", f"{item.ref}: no caption ({Path(item.ref).with_suffix('.txt').name} missing; give --caption for a default)"
    if opts.caption_from == "column":
        return "", f"{item.ref}: no '{opts.caption_column}' value (give --caption for a default)"
    return "", None
