"""Reading JSONL line by line (a bad line is one errored item, never a stopped run) and
writing JSONL atomically (temp file + rename)."""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.atomic import atomic_open
from loraflow.errors import InputError


@dataclass
class Line:
    """One input line: `sample` is the parsed object, or None with `error` set."""

    number: int  # 1-based
    sample: dict | None
    raw: str
    error: str | None = None


def read_jsonl(path: str | os.PathLike) -> Iterator[Line]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset not found: {path}")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]  # a BOM some editors add
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield Line(number, None, raw.decode("utf-8", "replace").rstrip("\r\n"),
                           f"line {number} is not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})")
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                yield Line(number, None, text, f"line {number} is not JSON: {e.msg} at column {e.colno}")
                continue
            if not isinstance(obj, dict):
                yield Line(number, None, text, f"line {number} is a JSON {type(obj).__name__}, expected an object")
                continue
            yield Line(number, obj, text)


def dumps(obj: Any) -> str:
    # data-juicer exports with force_ascii=False, so captions stay readable UTF-8
    return json.dumps(obj, ensure_ascii=False, default=_default)


def _default(o: Any) -> Any:
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    """Write rows atomically; returns how many were written."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n
