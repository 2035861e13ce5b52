"""loraflow: from a raw image collection to a fine-tuned text-to-image LoRA and an illustrated story.

The Python API (the README's "Python API" section):

    import loraflow
    pipe = loraflow.load()                        # a model once (none given: the demo model) -> Session
    pipe.generate("a red circle, white background")   # PIL images carrying their A1111 infotext
    loraflow.storyboard("story.yaml")             # panels, grid and story.json
    loraflow.data.ingest / filter / export / stats
    loraflow.train(config_or_file, **options)     # TrainResult: LoRA file, losses, loss plot
    loraflow.score(images, clip=..., aesthetic=...)

Each name is imported on first use, so `import loraflow` (and `loraflow --help`) never imports
torch. This file is the package's front door, not a layer: it holds no logic, only the table of
where each public name lives.
"""
from __future__ import annotations

import importlib
import types

__version__ = "0.1.0"

# public name -> the module that defines it
_API = {
    "load": "loraflow.api",
    "storyboard": "loraflow.api",
    "Session": "loraflow.api",
    "Images": "loraflow.api",
    "Storyboard": "loraflow.api",
}
# subpackages that are also called: `loraflow.train(...)`, `loraflow.score(...)` (see callable_package)
_PACKAGES = ("data", "train", "score", "errors")


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    if name in _PACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'loraflow' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_API) + list(_PACKAGES))


def callable_package(package: str, module: str, function: str) -> None:
    """Make the package `package` callable: `loraflow.train(...)` runs `module.function(...)`.

    Why: `loraflow.train` is a subpackage (`loraflow.train.trainer`, ...), and Python binds that name
    to the package as soon as any of its modules is imported, so a plain function of that name at
    the top could never win. A module whose class has `__call__` is both (module `__class__`
    assignment, Python >= 3.5). `module` is imported at the first call, keeping the package light.
    """
    import sys

    class CallablePackage(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(importlib.import_module(module), function)(*args, **kwargs)

    CallablePackage.__call__.__doc__ = f"Runs `{module}.{function}`; see its docstring."
    sys.modules[package].__class__ = CallablePackage
