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

Architecture: layers, lowest first. A module imports only from its own package or from a lower
layer, never from a higher one, not even inside a function (`tests/test_layers.py` reads every
import, function-local ones included, and also finds any import cycle). Packages that share a
layer are independent of each other.

    0. base      errors, atomic (the one way to write a file), config (typed options), images (decoding),
                 quiet (third-party output off unless --verbose), plots (matplotlib figures), progress
    1. models    families, loading, hashing, pickle_files, prompt syntax/encoding, LoRA files
    2. plan      memory model of a model family's runs (train.plan / generate.plan apply it)
    3. generate  GenerationSession, options, infotext, schedulers, control, grid, story (the file format)
    4. score     aesthetic and CLIP scorers, and `loraflow score`
    5. data      ingest, data-juicer filters, export    |  generate.storyboard, generate.story_scoring,
                                                            generate.character_sheet
    6. train     LoRA training
    7. serve     HTTP API and ComfyUI workflows          |  demo (the bundled demo model and its tools)
    8. cli, api  loraflow.cli and every package's `cli.py`, and loraflow.api (the Python API above):
                 thin shells that may import any layer

Why this order, where it is not obvious:
- score sits above generate: `loraflow score` reads the prompt from a generated PNG's infotext or
  from a story file (`generate.story`), and scorers need nothing from data or training.
- data sits above score: the data-juicer model filters (`image_aesthetics_filter`,
  `image_text_similarity_filter`) are the scorer under data-juicer's names.
- storyboard sits above score (best-of-N and `--score` rank panels), so the story file format
  (`generate.story`) is split from the renderer (`generate.storyboard`) to stay below score.
- train sits above data (it reads the data step's exports) and above score (validation scores);
  it decodes images with `loraflow.images.load_rgb`, as the filters do, so it trains on the
  pixels they saw, and it never imports generate's storyboard.
- demo trains the demo model with train's objective, so it sits beside serve, above train.

One helper per job, each in the lowest layer that needs it: file writes `loraflow.atomic`;
image decoding `loraflow.images`; file SHA-256 and A1111 hashes `loraflow.models.hashing`;
pickle suffixes and the weights-only unpickler `loraflow.models.pickle_files`; min-SNR weighting
`loraflow.train.objective.diffusion_loss`.
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
# subpackages that are also called: `loraflow.train(...)`, `loraflow.score(...)`, `loraflow.plan(...)`
# (see callable_package)
_PACKAGES = ("data", "train", "score", "plan", "errors")


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
