"""Atomic writes: write to a temp file in the same folder, then `os.replace`, so a crash or a
kill never leaves a half-written checkpoint, image or index where a good one was."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp"):
    """Yields a temp path beside `path`; on success it replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_save_image(image, path: str | os.PathLike, **save_kwargs) -> None:
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        image.save(tmp, format=save_kwargs.pop("format", None) or "PNG", **save_kwargs)
