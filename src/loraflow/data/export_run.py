"""`loraflow data export`: kept samples -> a training folder the trainers read.

* diffsynth   : OUT/train/0.jpg ... + OUT/train/metadata.csv (`file_name,text`, utf-8-sig; the seed)
* imagefolder : OUT/train/0.jpg ... + OUT/train/metadata.jsonl (`{"file_name", "text"}`; HF imagefolder)
* kohya       : OUT/{repeats}_{name}/0.jpg + 0.txt (sd-scripts' DreamBooth-style folders)

JPEG inputs are copied byte for byte; anything else is converted to RGB and saved as JPEG.
"""
from __future__ import annotations

import csv
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm  # a widget bar in Jupyter, a text bar in a terminal

from loraflow.atomic import atomic_open
from loraflow.images import ImageError, load_rgb, read_info
from loraflow.data.jsonl import read_jsonl, write_jsonl
from loraflow.data.options import ExportOptions
from loraflow.errors import ConfigError, InputError


@dataclass
class ExportResult:
    folder: Path
    written: list[tuple[str, str]] = field(default_factory=list)  # (file_name, caption)
    errored: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        n = len(self.written) + len(self.errored)
        return f"{n} in: {len(self.written)} exported + {len(self.errored)} errored -> {self.folder}"


def make_caption(text: str, trigger_word: str | None, prefix: str | None) -> str:
    parts = [p.strip() for p in (trigger_word, prefix, text) if p and p.strip()]
    return ", ".join(parts)


def _place_image(src: str, dest: Path) -> None:
    info = read_info(src)  # one-line ImageError for missing / unreadable / truncated files
    is_plain_jpeg = info.format == "JPEG" and info.mode == "RGB"
    if is_plain_jpeg:
        with Image.open(src) as im:
            is_plain_jpeg = im.getexif().get(0x0112, 1) <= 1  # no EXIF rotation to apply
    if is_plain_jpeg:
        shutil.copyfile(src, dest)
    else:
        load_rgb(src).save(dest, quality=95)


def export(opts: ExportOptions) -> ExportResult:
    if not opts.out:
        raise ConfigError("export: give --out DIR")
    lines = list(read_jsonl(opts.result))
    out = Path(opts.out)
    folder = out / f"{opts.repeats}_{opts.name}" if opts.format == "kohya" else out / "train"
    if folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty; export into a new folder")
    folder.mkdir(parents=True, exist_ok=True)
    result = ExportResult(folder)
    for line in tqdm(lines, desc="export", unit="img", disable=not opts.progress, leave=False):
        ref = f"{opts.result}:{line.number}"
        if line.sample is None:
            result.errored.append({"ref": ref, "error": line.error})
            continue
        paths = line.sample.get(opts.image_key)
        paths = [paths] if isinstance(paths, str) else paths
        text = line.sample.get(opts.text_key)
        text = "" if text is None else text  # a null caption is an empty one, never the word "None"
        if not paths or not isinstance(paths, list) or not isinstance(paths[0], str):
            result.errored.append({"ref": ref, "error": f"{ref}: no image path in '{opts.image_key}'"})
            continue
        if len(paths) > 1:
            result.errored.append({"ref": ref, "error": f"{ref}: {len(paths)} images in one sample; export takes one"})
            continue
        file_name = f"{len(result.written)}.jpg"
        try:
            _place_image(paths[0], folder / file_name)
        except (ImageError, OSError) as e:
            result.errored.append({"ref": ref, "error": f"{ref}: {e}"})
            continue
        result.written.append((file_name, make_caption(str(text), opts.trigger_word, opts.caption_prefix)))
    _write_index(opts.format, folder, result.written)
    write_jsonl(out / "export_errored.jsonl", result.errored)
    return result


def _write_index(fmt: str, folder: Path, rows: list[tuple[str, str]]) -> None:
    if fmt == "diffsynth":
        # utf-8-sig: what pandas' to_csv wrote in the seed
        with atomic_open(folder / "metadata.csv", encoding="utf-8-sig", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file_name", "text"])
            writer.writerows(rows)
    elif fmt == "imagefolder":
        write_jsonl(folder / "metadata.jsonl", ({"file_name": n, "text": t} for n, t in rows))
    else:
        for name, text in rows:
            (folder / name).with_suffix(".txt").write_text(text, encoding="utf-8")
