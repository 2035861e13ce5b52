"""Atomic writes, the one way loraflow writes a file that someone may be reading or may need after a crash.

1. a temp file beside the target (`.name.XXXXXXXX.tmp`, same folder so the rename cannot cross
   file systems), created with mode 0o666 so the user's umask decides the final permissions as a
   plain `open()` would (`tempfile.mkstemp` makes 0600, which left outputs unreadable to others);
2. written, then fsynced;
3. renamed over the target with `os.replace` (atomic on POSIX and Windows);
4. the folder fsynced, so the rename itself survives a power cut.

A crash or `kill -9` at any point leaves the previous file or the new one, never half of one;
on an exception the temp file is removed. `durable=False` skips the two fsyncs for bulk writes
(thousands of ingested images) where a redo is cheaper than a sync per file.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from loraflow.errors import ConfigError


def _create_temp(path: Path, suffix: str) -> Path:
    """An empty new file beside `path`; O_EXCL so two writers never share one."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # 1 in 4e9; pick another name
            continue


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", *, durable: bool = True) -> Iterator[Path]:
    """Yields a temp path beside `path` for writers that want a file name (Pillow, safetensors);
    when the block ends it replaces `path`, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path, suffix)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *, encoding: str | None = None,
                newline: str | None = None, durable: bool = True) -> Iterator[IO[Any]]:
    """`open(path, mode)` for writing, atomically: text modes default to UTF-8."""
    if "b" not in mode and encoding is None:
        encoding = "utf-8"
    with atomic_path(path, durable=durable) as tmp, open(tmp, mode, encoding=encoding, newline=newline) as f:
        yield f


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_image(image, path: str | os.PathLike, *, durable: bool = True, **save_kwargs) -> Path:
    """`image.save(path)` atomically; PNG unless `format=` says otherwise."""
    save_kwargs["format"] = save_kwargs.get("format") or "PNG"
    with atomic_path(path, suffix=Path(path).suffix, durable=durable) as tmp:
        image.save(tmp, **save_kwargs)
    return Path(path)


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """A safetensors file of `tensors` (moved to CPU, made contiguous) with string `metadata`.

    Serialised in memory, then written here: `safetensors.torch.save_file` replaces its target with
    a file of its own, mode 0600 whatever the umask.
    """
    from safetensors.torch import save

    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(tensors, metadata=metadata))


def apply_umask(folder: str | os.PathLike) -> Path:
    """Give every file under `folder` the mode the user's umask gives new files (0644 under 022).
    For folders written by other libraries: safetensors' `save_file`, which diffusers'
    `save_pretrained` uses, creates each weight file 0600 whatever the umask."""
    folder = Path(folder)
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")] if folder.is_dir() else [folder]:
        if path.is_file() and not path.is_symlink():
            path.chmod(0o666 & ~umask)
    return folder


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
