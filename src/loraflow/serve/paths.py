"""Every file name a client sends is resolved here, and only inside the server's folders.

Names are relative paths (`loras/style.safetensors`, `sub/00001-42.png`). Absolute paths, `..`,
NUL bytes, backslashes and symlinks that lead out of the folder are refused, so no route can read
or write outside `models_dir` / `outputs_dir` / `data_dir`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from loraflow.errors import InputError
from loraflow.models.loading import BUILTIN_MODELS

MODEL_SUFFIXES = (".safetensors",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


class PathRefused(InputError):
    """A name that points outside the allowed folder (HTTP 403)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotFound(InputError):
    """A well-formed name with no file behind it (HTTP 404)."""


# A file name a client may choose (a train job's `name`): letters of any script, digits, space, . _ - + ( ),
# not starting with a dot; never a folder.
# an absolute POSIX path in a message: a slash not inside a word or a relative path, up to a space,
# quote or punctuation that ends a path in our messages ("/srv/m/x.png: cannot open")
_ABSOLUTE_PATH = re.compile(r"(?<![\w./~-])/[^\s'\":,;()\[\]]+")
_FILE_NAME = re.compile(r"[^\W_][\w .+()\-]{0,127}")


def safe_join(root: str | os.PathLike, name: str, what: str = "file") -> Path:
    """`root / name`, guaranteed (after resolving symlinks) to lie inside `root`. One message for every
    refusal, so the answer never tells what lies outside the folder."""
    refused = PathRefused(f"{what} name {name!r} is not allowed: names are relative to the server's {what} folder")
    if not isinstance(name, str) or not name or "\x00" in name or "\\" in name:
        raise refused
    parts = Path(name).parts
    if Path(name).is_absolute() or name.startswith("~") or ".." in parts:
        raise refused
    base = Path(root).resolve()
    path = Path(os.path.realpath(base / name))
    if path != base and base not in path.parents:
        raise refused
    return path


def confine_path(value: str, roots: tuple[Path, ...], field: str) -> Path:
    """`value` (relative to the first root, or absolute) after following symlinks, inside one of
    `roots`; else PathRefused naming `field`, with the same text whether or not the path exists."""
    if not isinstance(value, str) or not value or "\x00" in value:
        raise PathRefused(f"key '{field}': {value!r} is not a path", field)
    given = Path(value)
    candidates = [given] if given.is_absolute() else [root / given for root in roots]
    bases = [Path(os.path.realpath(root)) for root in roots]
    inside = [real for real in (Path(os.path.realpath(c)) for c in candidates)
              if any(real == base or base in real.parents for base in bases)]
    if inside:  # the first that exists (an upload before an output of the same name), else the first
        return next((real for real in inside if real.exists()), inside[0])
    raise PathRefused(f"key '{field}': {value!r} is not inside the server's folders for this field "
                      f"({', '.join(root.name for root in roots)})", field)


def safe_file_name(name: str, field: str) -> str:
    """A client-chosen file name stem; anything with a folder, `..` or odd characters is refused."""
    if not isinstance(name, str) or not _FILE_NAME.fullmatch(name) or ".." in name:
        raise PathRefused(f"key '{field}': {name!r} is not a plain file name (letters, digits, space, . _ - + ( ); "
                          "no folders)", field)
    return name


@dataclass
class ServerPaths:
    models: Path
    outputs: Path
    data: Path

    @property
    def loras(self) -> Path:
        return self.models / "loras"

    @property
    def controlnets(self) -> Path:
        return self.models / "controlnet"

    @property
    def ipadapters(self) -> Path:
        return self.models / "ipadapter"  # ComfyUI_IPAdapter_plus's folder name

    @property
    def clip_visions(self) -> Path:
        return self.models / "clip_vision"  # ComfyUI's folder name

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def inputs(self) -> Path:
        return self.outputs / "input"  # uploads (ComfyUI's `input` type)

    def roots(self, kind: str) -> tuple[Path, ...]:
        """The folders a path of `kind` may resolve into (see `serve.confine`)."""
        return {"model": (self.models,), "lora": (self.loras, self.models), "image": (self.inputs, self.outputs),
                "dataset": (self.data,), "output": (self.outputs,)}[kind]

    @staticmethod
    def is_builtin_model(name: str) -> bool:
        return name in BUILTIN_MODELS

    def public_text(self, text: str) -> str:
        """`text` (a job's error) with the server's folders as the names clients use (models/, input/,
        output/, data/) and any other absolute path cut to its last part, so no message tells a client
        where the server keeps its files."""
        names = {self.inputs: "input", self.outputs: "output", self.models: "models", self.data: "data"}
        spelled = {str(p): n for folder, n in names.items() for p in (folder, folder.resolve())}
        for root in sorted(spelled, key=len, reverse=True):  # input/ lies inside output/: longest first
            text = text.replace(root + os.sep, spelled[root] + "/").replace(root, spelled[root])
        return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0)).name or "/", text)

    def make(self) -> None:
        for folder in (self.models, self.outputs, self.data, self.inputs):
            folder.mkdir(parents=True, exist_ok=True)

    # ---- models ----------------------------------------------------------------------------
    def model(self, name: str) -> str:
        """A base model by name: `tiny:sdxl`, a diffusers folder or a .safetensors file under
        models_dir (or models_dir/checkpoints, ComfyUI's layout)."""
        if isinstance(name, str) and (self.is_builtin_model(name) or name.startswith("tiny:")):
            return name  # built-in (`demo`, the `tiny:` models): the jobs API and /prompt resolve them alike
        return str(self._find(name, (self.checkpoints, self.models), "model", dirs=True))

    def lora(self, name: str) -> Path:
        """A LoRA by name (`style`, `style.safetensors`, `sub/style.safetensors`) under models_dir/loras
        (or models_dir)."""
        return self._find(name, (self.loras, self.models), "LoRA", add_suffix=True)

    def controlnet(self, name: str) -> Path:
        return self._find(name, (self.controlnets, self.models), "ControlNet", dirs=True)

    def ip_adapter(self, name: str) -> Path:
        """An IP-Adapter folder (the hub's layout) or .safetensors file under models_dir/ipadapter (or
        models_dir). Its image encoder is looked for beside it, up to the file's grandparent folder
        (models/ipadapter/sdxl_models/x.safetensors -> models/ipadapter/models/image_encoder), so that
        folder must be inside models_dir as well."""
        for root in (self.ipadapters, self.models):
            path = safe_join(root, name, "IP-Adapter")
            if path.is_dir() or (path.is_file() and path.suffix.lower() in MODEL_SUFFIXES):
                base = self.models.resolve()
                if path.is_file() and base not in path.parent.parents:
                    raise PathRefused(f"IP-Adapter {name!r}: put the file in a folder under models_dir/ipadapter "
                                      "with its image encoder")
                return path
        raise NotFound(f"IP-Adapter '{name}' not found in {self.ipadapters}")

    def clip_vision(self, name: str) -> Path:
        """A CLIP vision encoder: a transformers folder (config.json + weights) under models_dir/clip_vision."""
        path = safe_join(self.clip_visions, name, "CLIP vision")
        if not (path / "config.json").is_file():
            raise NotFound(f"CLIP vision '{name}' not found in {self.clip_visions} (a folder with config.json "
                           "and model.safetensors, as transformers saves CLIPVisionModelWithProjection)")
        return path

    def _find(self, name: str, roots: tuple[Path, ...], what: str, dirs: bool = False, add_suffix: bool = False) -> Path:
        candidates = [name] + ([f"{name}.safetensors"] if add_suffix and not name.endswith(".safetensors") else [])
        for root in roots:
            for cand in candidates:
                path = safe_join(root, cand, what)
                if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
                    return path
                if dirs and path.is_dir() and any((path / f).is_file() for f in ("model_index.json", "config.json")):
                    return path
        raise NotFound(f"{what} '{name}' not found in {roots[0]} (available: {', '.join(self.list(what)) or 'none'})")

    def list(self, what: str) -> list[str]:
        """Names a client may pass for `what` ("model", "LoRA", "ControlNet")."""
        if what == "LoRA":
            roots = [self.loras, self.models]
        elif what == "ControlNet":
            roots = [self.controlnets]
        else:
            roots = [self.checkpoints, self.models]
        names: list[str] = []
        for root in roots:
            if not root.is_dir():
                continue
            nested = () if root != self.models else (self.loras, self.checkpoints, self.controlnets, self.ipadapters,
                                                                self.clip_visions)
            for p in _walk(root, nested):
                rel = p.relative_to(root).as_posix()
                if what == "model" and p.is_dir() and (p / "model_index.json").is_file():
                    names.append(rel)
                elif what == "ControlNet" and p.is_dir() and (p / "config.json").is_file():
                    names.append(rel)
                elif p.is_file() and p.suffix.lower() in MODEL_SUFFIXES and _kind_of_file(p) == what:
                    names.append(rel)
        return list(dict.fromkeys(names))

    # ---- outputs ---------------------------------------------------------------------------
    def output_file(self, name: str, subfolder: str = "", kind: str = "output") -> Path:
        """An existing image under outputs_dir (`kind` output / temp) or the uploads folder (input)."""
        root = {"output": self.outputs, "temp": self.outputs / "temp", "input": self.inputs}.get(kind)
        if root is None:
            raise PathRefused(f"type {kind!r} is not one of: output, input, temp")
        folder = safe_join(root, subfolder, "output") if subfolder else root.resolve()
        path = safe_join(folder, name, "output")
        if path.suffix.lower() not in IMAGE_SUFFIXES + (".json", ".yaml", ".txt") or not path.is_file():
            raise NotFound(f"no file '{name}' in {kind}/{subfolder}")
        return path

    def data_file(self, name: str) -> Path:
        return safe_join(self.data, name, "data")


def _walk(root: Path, skip: tuple[Path, ...] = ()):
    """Files and folders under `root`, sorted; hidden entries, `skip` folders (listed from their
    own root) and the inside of model folders left out."""
    base = Path(os.path.realpath(root))
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or p in skip:
            continue
        real = Path(os.path.realpath(p))
        if real != base and base not in real.parents:
            continue  # a symlink that leads out is never offered (and refused when named)
        yield p
        if p.is_dir() and not (p / "model_index.json").is_file() and not (p / "config.json").is_file():
            yield from _walk(p)


def _kind_of_file(path: Path) -> str:
    """Base models and LoRAs can share models_dir; a LoRA file is small and has lora keys. We only look
    at the safetensors header (no tensors are read)."""
    import json
    import struct

    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                return "model"
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error):
        return "unknown"
    keys = [k for k in header if k != "__metadata__"]
    if any("lora" in k for k in keys[:200]):
        return "LoRA"
    if path.parent.name == "controlnet":
        return "ControlNet"
    return "model"
