"""The full-size architecture of a base model, built on the meta device (no weight is allocated).

Configs come from, in this order: a diffusers folder given as `model` (its model_index.json and
component config.json files; no weight file is opened), the configs shipped in
`loraflow/models/configs/<family>/` (`--family NAME`, a single-file checkpoint, or a folder that
is not on this machine), or the in-process tiny model (`tiny:NAME`, built with its real code).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError
from loraflow.models.families import get_family
from loraflow.models.tiny import build_tiny_components

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "models" / "configs"


@dataclass
class Architecture:
    family: Any  # loraflow.models.families adapter class
    source: str  # where the configs came from (shown in the report)
    builders: dict = field(default_factory=dict)  # component name -> zero-argument function building it
    configs: dict = field(default_factory=dict)  # component name -> its config.json (not for tiny models)

    def config(self, name: str) -> dict:
        return self.configs[name] if name in self.configs else dict(self.build(name).config)

    def build(self, name: str, dtype=None):
        """Component `name` on the meta device, in `dtype` when given."""
        import torch

        with torch.device("meta"):
            module = self.builders[name]()
        if any(p.device.type != "meta" for p in module.parameters()):  # tiny models are built for real
            module = module.to("meta")
        module.requires_grad_(False)
        return module.to(dtype) if dtype is not None else module

    @property
    def text_encoder_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.family.text_encoder_names if n in self.builders)


def resolve_architecture(model: str | None, family: str | None) -> Architecture:
    """See the module docstring. A one-line ConfigError when neither model nor family tells it."""
    if model and model.startswith("tiny:"):
        return _tiny(get_family(family or model.split(":", 1)[1]))
    folder = Path(model).expanduser() if model else None
    if folder is not None and (folder / "model_index.json").is_file():
        from loraflow.models.loading import detect_folder_family

        fam = get_family(family or detect_folder_family(folder) or "")
        return _from_folder(folder, fam, str(folder))
    if family is None and folder is not None and folder.suffix == ".safetensors" and folder.is_file():
        from loraflow.models.single_file import detect_checkpoint_family

        family = detect_checkpoint_family(folder)  # reads the tensor header only
    if family is None:
        where = f"model {model} is not a diffusers folder on this machine" if model else "no --model"
        raise ConfigError(f"plan: {where}; pass --family NAME to plan with the shipped configs")
    fam = get_family(family)
    shipped = CONFIG_ROOT / fam.name
    if not (shipped / "model_index.json").is_file():
        raise ConfigError(f"plan: no shipped configs for family '{fam.name}' ({shipped})")
    return _from_folder(shipped, fam, f"shipped configs of {fam.name}")


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"plan: cannot read {path} ({e})") from None


def _from_folder(folder: Path, fam, source: str) -> Architecture:
    index = _read(folder / "model_index.json")
    arch = Architecture(fam, source)
    for name in ("unet", "vae", *fam.text_encoder_names):
        entry = index.get(name)
        config_file = folder / name / "config.json"
        if not entry or not config_file.is_file():
            raise ConfigError(f"plan: {folder} has no {name}/config.json")
        arch.configs[name] = _read(config_file)
        arch.builders[name] = _builder(entry[0], entry[1], arch.configs[name])
    return arch


def _builder(library: str, class_name: str, config: dict):
    """A function building `library.class_name` from `config` (diffusers, transformers, or the
    ChatGLM encoder diffusers keeps in its Kolors pipeline package)."""
    if library == "diffusers":
        def build():
            import diffusers

            return getattr(diffusers, class_name).from_config(config)
    elif library == "transformers":
        def build():
            import transformers

            cls = getattr(transformers, class_name)
            return cls(cls.config_class(**{k: v for k, v in config.items() if not k.startswith("_")}))
    else:  # a model kept inside a diffusers pipeline package (model_index.json names the package)
        def build():
            import importlib
            import inspect

            cls = getattr(importlib.import_module(f"diffusers.pipelines.{library}"), class_name)
            # ChatGLM's default `empty_init` (skip_init) would allocate real, uninitialised CPU memory
            extra = {"empty_init": False} if "empty_init" in inspect.signature(cls.__init__).parameters else {}
            return cls(cls.config_class(**config), **extra)
    return build


def _tiny(fam) -> Architecture:
    arch = Architecture(fam, f"tiny:{fam.name}")

    def component(name):
        def build():
            import tempfile

            import torch

            # built for real on the CPU (a few kB; its scheduler cannot be made on meta)
            with tempfile.TemporaryDirectory() as workdir, torch.device("cpu"):  # tokenizer files: not kept
                return build_tiny_components(fam.name, workdir=workdir)[name]
        return build

    for name in ("unet", "vae", *fam.text_encoder_names):
        arch.builders[name] = component(name)
    return arch
