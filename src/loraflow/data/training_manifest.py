"""The one reader trainers call: any of our export layouts (or a data-juicer JSONL) -> items.

Recognised, in this order, for a folder PATH:
  PATH/metadata.csv or PATH/train/metadata.csv          diffsynth (`file_name,text`)
  PATH/metadata.jsonl or PATH/train/metadata.jsonl      imagefolder (`file_name`) or data-juicer (`image`)
  PATH/{N}_{name}/*.jpg + .txt                          kohya (repeats = N)
and for a file PATH: a metadata.csv, or a JSONL in either layout.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from loraflow.data.jsonl import read_jsonl
from loraflow.data.sources import IMAGE_SUFFIXES
from loraflow.errors import InputError

_KOHYA_DIR = re.compile(r"^(\d+)_(.+)$")


@dataclass(frozen=True)
class TrainingItem:
    image_path: Path
    caption: str
    repeats: int = 1
    mask: Path | None = None  # loss-weight mask image from the metadata's mask column (training's masked loss)


def read_training_items(path: str | Path, mask_column: str = "mask") -> list[TrainingItem]:
    """All items of a training folder/file; InputError (one line) if the layout is unknown,
    a row is malformed or an image (or a mask named in `mask_column`) is missing."""
    path = Path(path)
    if path.is_file():
        items = _read_csv(path, mask_column) if path.suffix == ".csv" else _read_jsonl(path, mask_column)
    elif path.is_dir():
        items = _read_folder(path, mask_column)
    else:
        raise InputError(f"training data not found: {path}")
    missing = [i.image_path for i in items if not i.image_path.is_file()]
    if missing:
        raise InputError(f"{path}: {len(missing)} image(s) missing, e.g. {missing[0]}")
    missing = [i.mask for i in items if i.mask is not None and not i.mask.is_file()]
    if missing:
        raise InputError(f"{path}: {len(missing)} mask(s) named in column '{mask_column}' missing, e.g. {missing[0]}")
    if not items:
        raise InputError(f"{path}: no training items")
    return items


def _mask_path(base: Path, value) -> Path | None:
    if not value:
        return None
    return Path(value) if Path(value).is_absolute() else base / value


def _read_folder(root: Path, mask_column: str) -> list[TrainingItem]:
    for base in (root, root / "train"):
        if (base / "metadata.csv").is_file():
            return _read_csv(base / "metadata.csv", mask_column)
        if (base / "metadata.jsonl").is_file():
            return _read_jsonl(base / "metadata.jsonl", mask_column)
    kohya = sorted(d for d in root.iterdir() if d.is_dir() and _KOHYA_DIR.match(d.name))
    if kohya:
        return [item for d in kohya for item in _read_kohya_dir(d)]
    raise InputError(f"{root}: not a training folder: expected metadata.csv / metadata.jsonl "
                     "(also under train/) or kohya N_name/ folders")


def _read_csv(path: Path, mask_column: str) -> list[TrainingItem]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and not {"file_name", "text"} <= set(rows[0]):
        raise InputError(f"{path}: expected columns file_name,text; got {','.join(rows[0])}")
    return [TrainingItem(path.parent / r["file_name"], r["text"] or "", mask=_mask_path(path.parent, r.get(mask_column)))
            for r in rows]


def _read_jsonl(path: Path, mask_column: str) -> list[TrainingItem]:
    items = []
    for line in read_jsonl(path):
        if line.sample is None:
            raise InputError(f"{path}: {line.error}")
        s = line.sample
        if "file_name" in s:
            image = path.parent / s["file_name"]
        elif s.get("image") or s.get("images"):
            paths = s.get("image") or s.get("images")
            first = paths if isinstance(paths, str) else paths[0]
            image = Path(first) if Path(first).is_absolute() else path.parent / first
        else:
            raise InputError(f"{path}:{line.number}: no 'file_name' or 'image' field")
        items.append(TrainingItem(image, str(s.get("text", "")), int(s.get("repeats", 1)),
                                  _mask_path(path.parent, s.get(mask_column))))
    return items


def _read_kohya_dir(folder: Path) -> list[TrainingItem]:
    repeats = int(_KOHYA_DIR.match(folder.name).group(1))
    items = []
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    stems = {p.stem for p in images}
    # NAME_mask.png beside NAME.jpg is NAME's loss mask (training's masked loss), not an image of its own
    for image in (p for p in images if not (p.stem.endswith("_mask") and p.stem[:-len("_mask")] in stems)):
        txt = image.with_suffix(".txt")
        caption = txt.read_text(encoding="utf-8").strip() if txt.is_file() else ""
        items.append(TrainingItem(image, caption, repeats))
    return items
