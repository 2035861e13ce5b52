"""Atomic writes: write to a temp file in the same folder, then `os.replace`, so a crash or a
kill never leaves a half-written checkpoint, image or index where a good one was."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from loraflow.errors import ConfigError


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


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when `a` and `b` name one file (symlinks and `..` followed; hard links via the inode)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): not the same file
        return False


def check_outputs_apart(outputs: list[str | os.PathLike], inputs: dict[str, str | os.PathLike | None],
                        source: str) -> None:
    """Refuse (one line naming the key) when a file a command will write is one of its own inputs:
    an atomic replace would silently destroy the source (a filter's manifest, a story's init image)."""
    for out in outputs:
        for key, path in inputs.items():
            if path and same_file(out, path):
                raise ConfigError(f"{source}: the output {Path(out).name} would overwrite the input '{key}' "
                                  f"({path}); write to another folder or file")
