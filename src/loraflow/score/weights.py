"""Where scoring weights come from: a local folder or file, or (only with network) a hub repo.

Nothing is downloaded unless the user named a hub repo *and* `HF_HUB_OFFLINE` is unset; every
failure is one `ModelLoadError` line that says which local path to pass instead. Pickle files
(`.pth/.pt/.bin/.ckpt`) are refused unless the user allowed them, then read with
`torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from loraflow.errors import ModelLoadError
from loraflow.models.pickle_files import PICKLE_SUFFIXES, load_pickle_state_dict

if TYPE_CHECKING:
    import torch

_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve_local(name: str, what: str, flag: str, allow_pickle: bool = False) -> Path:
    """`name` as a local path; a hub repo id is looked up in the HF cache, then fetched if online."""
    path = Path(name).expanduser()
    if path.exists():
        return path
    if not _HUB_ID.match(name):
        raise ModelLoadError(f"{what} not found: {name}; pass a local folder or file with {flag}")
    from huggingface_hub import snapshot_download

    # Never the pickle/TF/Flax copies a hub repo may also hold (CLIP ViT-L/14: ~6 GB of them).
    patterns = ["*.json", "*.txt", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    try:
        return Path(snapshot_download(name, allow_patterns=patterns, local_files_only=True))
    except Exception:  # not cached: fall through to the network, if allowed
        pass
    hint = f"download it and pass its local folder with {flag}"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off"):
        raise ModelLoadError(f"{what} '{name}' is not a local path and HF_HUB_OFFLINE is set; {hint}")
    try:
        return Path(snapshot_download(name, allow_patterns=patterns))
    except Exception as e:  # any hub/network failure becomes one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"{what} '{name}' is neither a local path nor fetchable from the Hugging Face hub "
                             f"({first}); {hint}") from None


def read_state_dict(path: Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file, or of a pickle file when the user allowed it."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # truncated/corrupt files raise several error types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ModelLoadError(f"cannot read {path}: {first}") from None
    if path.suffix not in PICKLE_SUFFIXES:
        raise ModelLoadError(f"unsupported weights file {path}; expected .safetensors (or {'/'.join(PICKLE_SUFFIXES)})")
    if not allow_pickle:
        raise ModelLoadError(f"{path} is a pickle file; convert it to .safetensors or pass --allow-pickle "
                             "(then it is read with torch.load(weights_only=True))")
    return load_pickle_state_dict(path)


def folder_weights(folder: Path, flag: str) -> Path:
    """The single weights file of a transformers folder (`model.safetensors` or `pytorch_model.bin`)."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    if list(folder.glob("*.safetensors.index.json")) or list(folder.glob("*.bin.index.json")):
        raise ModelLoadError(f"{folder} holds sharded weights; load it with transformers and save_pretrained "
                             "with a larger max_shard_size, then pass that folder with " + flag)
    raise ModelLoadError(f"{folder} has no model.safetensors (or pytorch_model.bin); "
                         f"pass a complete folder with {flag}")
