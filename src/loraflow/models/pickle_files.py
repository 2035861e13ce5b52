"""Pickled weight files (`.ckpt/.pt/.pth/.bin`): loading one can run code, so every loader refuses
them unless the user allowed pickle, and then reads them only through torch's restricted unpickler."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from loraflow.errors import ModelLoadError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def load_pickle_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The tensors of a pickled state dict, read with `torch.load(weights_only=True)` (tensors and
    plain containers only); a Lightning checkpoint's nested `state_dict` is unwrapped."""
    import torch

    path = Path(path)
    state = load_pickle_dict(path, "a weights-only torch checkpoint")
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning checkpoints: {"state_dict": {...}, "global_step": ...}
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def load_pickle_dict(path: Path, what: str) -> dict:
    """A pickled dict as saved, nested dicts included, read by torch's restricted unpickler (tensors and
    plain containers only); anything else, or a file that will not read, is a one-line ModelLoadError
    saying it is not `what`."""
    import torch

    try:
        try:  # mmap: tensors are paged in when converted, not all at once
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)  # pre-zip (torch < 1.6) format
    except Exception as e:  # weights_only refuses anything but tensors/containers; zip errors if cut short
        reason = _ANSI.sub("", (str(e).strip().splitlines() or [""])[0])[:200]  # torch bolds its advice
        raise ModelLoadError(f"{path}: cannot read as {what} ({e.__class__.__name__}: {reason})") from None
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path}: holds a {type(state).__name__}, not {what}")
    return state
