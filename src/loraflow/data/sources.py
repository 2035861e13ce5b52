"""Where ingest gets images from: a folder, a JSONL/CSV manifest, a Hugging Face or a ModelScope
dataset. Each source yields `RawItem`s; a problem with one item is recorded on that item.

Manifest paths may not escape their root (`../../etc/passwd` is refused per item). Hub loaders
are injectable (`hub_loader=`) so tests run the same code path on local dataset objects.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.data.jsonl import read_jsonl
from loraflow.data.options import IngestOptions
from loraflow.errors import ConfigError, InputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


@dataclass
class RawItem:
    ref: str  # what to call it in messages: a path, "manifest.jsonl:7", "hf:name[12]"
    path: str | None = None  # image file, or ...
    picture: Any = None  # ... an in-memory PIL image / {"bytes": ...} from a hub dataset
    caption: str | None = None
    error: str | None = None  # set when the item is already known to be bad
    skip: str | None = None  # set when the item is not an input at all (e.g. notes.md in a folder)


def iter_source(opts: IngestOptions, hub_loader: Callable[..., Any] | None = None) -> Iterator[RawItem]:
    src = opts.source
    if src.startswith("hf:"):
        yield from _hub_rows(_load_hf(src[3:], opts, hub_loader), "hf:" + src[3:], opts)
    elif src.startswith(("ms:", "modelscope:")):
        name = src.split(":", 1)[1]
        yield from _hub_rows(_load_ms(name, opts, hub_loader), "ms:" + name, opts)
    else:
        path = Path(src)
        if path.is_dir():
            yield from _folder(path, opts)
        elif path.is_file() and path.suffix.lower() in (".jsonl", ".csv"):
            yield from (_jsonl if path.suffix.lower() == ".jsonl" else _csv)(path, opts)
        elif path.exists():
            raise InputError(f"{src}: expected a folder, a .jsonl/.csv manifest, hf:NAME or ms:NAME")
        else:
            raise InputError(f"{src}: no such folder or file (hub datasets are written hf:NAME or ms:NAME)")


# ---- local folder (kohya style: a.jpg + a.txt) ------------------------------------------------
def _folder(root: Path, opts: IngestOptions) -> Iterator[RawItem]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        suffix = path.suffix.lower()
        if suffix in (".txt", ".caption"):
            if not any(path.with_suffix(s).exists() for s in IMAGE_SUFFIXES | {s.upper() for s in IMAGE_SUFFIXES}):
                yield RawItem(str(path), skip="caption file with no same-name image")
            continue
        if suffix not in IMAGE_SUFFIXES:
            yield RawItem(str(path), skip=f"not an image by its extension ({suffix or 'none'})")
            continue
        item = RawItem(str(path), path=str(path))
        if opts.caption_from in (None, "txt"):
            txt = path.with_suffix(".txt")
            if txt.exists():
                item.caption, item.error = _read_caption(txt)
        yield item


def _read_caption(path: Path) -> tuple[str | None, str | None]:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig").strip(), None
    except UnicodeDecodeError as e:
        return None, f"caption file {path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); re-save it as UTF-8"


# ---- manifests ---------------------------------------------------------------------------------
def _inside(path_text: str, base: Path, root: Path, ref: str) -> tuple[str | None, str | None]:
    """Resolve a manifest path; refuse it if it leaves `root`."""
    p = Path(path_text)
    full = (p if p.is_absolute() else base / p).resolve()
    if not full.is_relative_to(root):
        return None, f"{ref}: path '{path_text}' escapes the dataset root {root} (use --root to widen it)"
    return str(full), None


def _manifest_item(row: dict, ref: str, base: Path, root: Path, opts: IngestOptions) -> RawItem:
    keys = [opts.image_column] + [k for k in ("image", "images", "file_name", "path") if k != opts.image_column]
    value = next((row[k] for k in keys if row.get(k) not in (None, "", [])), None)
    if isinstance(value, list):
        if len(value) != 1:
            return RawItem(ref, error=f"{ref}: expected one image, got a list of {len(value)}")
        value = value[0]
    if not isinstance(value, str):
        return RawItem(ref, error=f"{ref}: no image path in columns {', '.join(keys)}")
    path, error = _inside(value, base, root, ref)
    caption = row.get(opts.caption_column) if opts.caption_from in (None, "column") else None
    if caption is not None and not isinstance(caption, str):
        caption = str(caption)
    return RawItem(ref, path=path, caption=caption, error=error)


def _root(manifest: Path, opts: IngestOptions) -> Path:
    return Path(opts.root).resolve() if opts.root else manifest.parent.resolve()


def _jsonl(manifest: Path, opts: IngestOptions) -> Iterator[RawItem]:
    base, root = manifest.parent.resolve(), _root(manifest, opts)
    for line in read_jsonl(manifest):
        ref = f"{manifest}:{line.number}"
        if line.sample is None:
            yield RawItem(ref, error=f"{manifest}: {line.error}")
        else:
            yield _manifest_item(line.sample, ref, base, root, opts)


def _csv(manifest: Path, opts: IngestOptions) -> Iterator[RawItem]:
    base, root = manifest.parent.resolve(), _root(manifest, opts)
    raw_lines = manifest.read_bytes().splitlines()
    header: list[str] | None = None
    for number, raw in enumerate(raw_lines, start=1):
        ref = f"{manifest}:{number}"
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # utf-8-sig, as the seed writes
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield RawItem(ref, error=f"{ref}: line is not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
            continue
        cells = next(csv.reader(io.StringIO(text)))
        if header is None:
            header = cells
            continue
        if len(cells) != len(header):
            yield RawItem(ref, error=f"{ref}: {len(cells)} cells, header has {len(header)}")
            continue
        yield _manifest_item(dict(zip(header, cells)), ref, base, root, opts)


# ---- hub datasets ------------------------------------------------------------------------------
def _load_hf(spec: str, opts: IngestOptions, loader: Callable[..., Any] | None) -> Any:
    name, _, split = spec.partition(":")
    split = split or opts.split
    if loader is None:
        try:
            from datasets import load_dataset as loader
        except ImportError:
            raise ConfigError(f"hf:{name} needs the Hugging Face `datasets` package: pip install 'loraflow[hf]'") from None
    try:
        return loader(name, opts.subset_name, split=split, cache_dir=opts.cache_dir)
    except Exception as e:  # network down, unknown name, auth ... : one line, not a traceback
        raise InputError(f"hf:{name}: could not load split '{split}' ({type(e).__name__}: "
                         f"{_first_line(e)}); check the name and your network, or ingest a local folder") from None


def _load_ms(name: str, opts: IngestOptions, loader: Callable[..., Any] | None) -> Any:
    if loader is None:
        try:
            from modelscope.msdatasets import MsDataset
        except ImportError:
            raise ConfigError(f"ms:{name} needs the `modelscope` package: pip install 'loraflow[modelscope]'") from None
        loader = MsDataset.load
    try:
        # the seed: MsDataset.load(name, subset_name='default', split='train', cache_dir=...)
        return loader(name, subset_name=opts.subset_name or "default", split=opts.split, cache_dir=opts.cache_dir)
    except Exception as e:
        raise InputError(f"ms:{name}: could not load split '{opts.split}' ({type(e).__name__}: "
                         f"{_first_line(e)}); check the name and your network, or ingest a local folder") from None


def _hub_rows(ds: Any, ref: str, opts: IngestOptions) -> Iterator[RawItem]:
    for i, row in enumerate(ds):
        item_ref = f"{ref}[{i}]"
        if not isinstance(row, dict):
            yield RawItem(item_ref, error=f"{item_ref}: row is a {type(row).__name__}, expected a mapping")
            continue
        picture = row.get(opts.image_column)
        caption = row.get(opts.caption_column) if opts.caption_from in (None, "column") else None
        if picture is None:
            yield RawItem(item_ref, error=f"{item_ref}: no '{opts.image_column}' column (has: {', '.join(row)})")
        elif isinstance(picture, str):  # some hub loaders give a downloaded file path
            yield RawItem(item_ref, path=picture, caption=caption)
        else:
            yield RawItem(item_ref, picture=picture, caption=None if caption is None else str(caption))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else "no message"
