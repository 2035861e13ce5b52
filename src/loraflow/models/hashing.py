"""The model and LoRA hashes AUTOMATIC1111 and Civitai show, so our infotexts link up there.

- `model_hash`: "Model hash" in A1111 infotexts (`shorthash`, Civitai "AutoV2"): the first
  10 hex digits of the SHA-256 of the whole checkpoint file (`modules/hashes.py::sha256`).
- `legacy_model_hash`: A1111's pre-2023 8-digit hash (`modules/sd_models.py::model_hash`):
  SHA-256 of the 64 KiB at offset 1 MiB.
- `lora_hash`: "Lora hashes" in A1111 infotexts: the first 12 hex digits of kohya-ss's
  "addnet" hash, the SHA-256 of a safetensors file after its header, i.e. the tensor bytes
  only, so editing metadata keeps the hash (`modules/hashes.py::addnet_hash_safetensors`,
  `extensions-builtin/Lora/network.py::NetworkOnDisk.set_hash`).

Files are streamed in 1 MiB chunks and nothing is cached: callers that hash the same file
often keep the result themselves.

A diffusers folder has no single checkpoint file. We hash its UNet weights: every family's
folder (Kolors, SDXL, SD1.5) has one, and it is what differs between fine-tunes of one base,
while text encoders and VAE are often shared: `unet/diffusion_pytorch_model.safetensors`
(or a variant such as `.fp16.safetensors`; a sharded UNet is hashed as its shards
concatenated in shard order).
So the hash of a diffusers folder will not match the one Civitai shows for the
single-file checkpoint of the same model.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from loraflow.errors import ModelLoadError

CHUNK_SIZE = 1 << 20  # 1 MiB, as A1111 reads
_UNET_WEIGHTS = "diffusion_pytorch_model"
_SHARD = re.compile(rf"{_UNET_WEIGHTS}-(\d+)-of-(\d+)\.safetensors")
_LORA_FILENAMES = ("pytorch_lora_weights.safetensors",)  # diffusers/peft save name


def file_stamp(path: str | os.PathLike) -> tuple:
    """(size, mtime_ns, inode) of a file, or of each file of a folder: what identifies its content cheaply
    for a cache (rewritten in place: size or mtime change; replaced by rename: the inode does)."""
    path = Path(path)
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    return tuple(x for f in files for st in [f.stat()] for x in (st.st_size, st.st_mtime_ns, st.st_ino))


def _sha256_files(paths: list[Path], offset: int = 0) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            f.seek(offset)
            while chunk := f.read(CHUNK_SIZE):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Full hex SHA-256 of a file (Civitai's "SHA256")."""
    return _sha256_files([_existing(path)])


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"cannot hash {path}: no such file or folder")
    return path


def model_weights_files(path: str | os.PathLike) -> list[Path]:
    """The file(s) `model_hash` reads: `path` itself, or a diffusers folder's UNet weights."""
    path = _existing(path)
    if path.is_file():
        return [path]
    folder = path / "unet" if (path / "unet").is_dir() else path
    exact = folder / f"{_UNET_WEIGHTS}.safetensors"
    if exact.is_file():
        return [exact]
    shards = sorted(
        (p for p in folder.glob(f"{_UNET_WEIGHTS}-*-of-*.safetensors") if _SHARD.fullmatch(p.name)),
        key=lambda p: int(_SHARD.fullmatch(p.name).group(1)),
    )
    if shards:
        return shards
    variants = sorted(folder.glob(f"{_UNET_WEIGHTS}.*.safetensors"))  # e.g. .fp16.safetensors
    if variants:
        return [variants[0]]
    raise ModelLoadError(
        f"cannot hash {path}: no UNet weights found; expected a checkpoint file or a diffusers "
        f"folder with unet/{_UNET_WEIGHTS}.safetensors"
    )


def model_hash(path: str | os.PathLike) -> str:
    """A1111 "Model hash": first 10 hex digits of the SHA-256 of the checkpoint file.

    For a diffusers folder the UNet weights are hashed (see the module docstring).
    """
    return _sha256_files(model_weights_files(path))[:10]


def legacy_model_hash(path: str | os.PathLike) -> str:
    """A1111's old 8-digit model hash: SHA-256 of 0x10000 bytes at offset 0x100000.

    A file shorter than 1 MiB hashes the empty string, as in A1111.
    """
    with open(model_weights_files(path)[0], "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]


def _lora_file(path: str | os.PathLike) -> Path:
    path = _existing(path)
    if path.is_file():
        return path
    for name in _LORA_FILENAMES:
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.safetensors"))
    if len(found) == 1:
        return found[0]
    raise ModelLoadError(
        f"cannot hash LoRA folder {path}: expected one .safetensors file "
        f"(e.g. {_LORA_FILENAMES[0]}), found {len(found)}"
    )


def lora_hash(path: str | os.PathLike) -> str:
    """A1111 "Lora hashes" value: first 12 hex digits of the addnet hash.

    For a `.safetensors` file that is the SHA-256 of everything after the 8-byte header
    length and the JSON header; any other file is hashed whole, as A1111 does. A folder
    holding one LoRA `.safetensors` file (diffusers' save layout) hashes that file.
    """
    path = _lora_file(path)
    if path.suffix != ".safetensors":
        return _sha256_files([path])[:12]
    size = path.stat().st_size
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
    if size < 8 or 8 + header_len > size:
        raise ModelLoadError(
            f"cannot hash {path}: not a valid safetensors file: header length {header_len} "
            f"does not fit in {size} bytes"
        )
    return _sha256_files([path], offset=8 + header_len)[:12]
