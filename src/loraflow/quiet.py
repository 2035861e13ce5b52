"""Third-party output a command user did not ask for, switched off in one place (`loraflow
--verbose` leaves it on): diffusers' and transformers' log messages ("`torch_dtype` is deprecated",
"`CLIPImageProcessor` requires torchvision", tokenizer notices), their "Loading pipeline
components" / "Loading weights" bars, Hugging Face Hub bars, and the deprecation warnings these
libraries raise from their own code. loraflow's own messages and progress bars are untouched.

Each library is silenced with its own switch. Importing diffusers or transformers imports torch
(seconds), and `loraflow --help` or `loraflow data stats` must not pay that, so the switches are
set when the library is first imported (`_after_import`), or at once if it already is. Environment
variables cover what child processes (data loader workers, Ray) import on their own.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import warnings
from typing import Callable

# Libraries whose log level and progress bars we set, by the module that holds those switches.
LOGGING_MODULES = ("diffusers.utils.logging", "transformers.utils.logging")
# Packages whose FutureWarning/DeprecationWarning are about their own internals (we pass current
# arguments; the warning is theirs to act on), matched against the module a warning is raised from.
WARNING_SOURCES = r"(diffusers|transformers|huggingface_hub|peft|accelerate)(\..*)?$"
ENVIRONMENT = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # huggingface_hub bars; transformers reads it for its own too
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "TOKENIZERS_PARALLELISM": "false",  # the "process just got forked" notice of Rust tokenizers
}


def silence_third_party(verbose: bool = False) -> None:
    """Turn third-party chatter off for this process (a no-op with `verbose`). A variable the user
    set in the environment wins over ours."""
    if verbose:
        return
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=WARNING_SOURCES)
    for module in LOGGING_MODULES:
        _after_import(module, _errors_only_no_bars)


def _errors_only_no_bars(logging_module) -> None:
    """diffusers.utils.logging and transformers.utils.logging have the same two switches."""
    logging_module.set_verbosity_error()
    logging_module.disable_progress_bar()


def _after_import(name: str, action: Callable) -> None:
    """Call `action(module)` once module `name` is imported: now if it already is, otherwise right
    after its code has run (diffusers has no environment variable for its progress bars)."""
    if name in sys.modules:
        action(sys.modules[name])
    elif not any(isinstance(f, _AfterImport) and f.name == name for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(name, action))


class _AfterImport(importlib.abc.MetaPathFinder):
    """A finder that finds nothing itself: for one module name it asks the other finders, then
    wraps the loader so `action` runs after the module's code. It removes itself when used."""

    def __init__(self, name: str, action: Callable):
        self.name, self.action = name, action

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module, action = spec.loader.exec_module, self.action

        def exec_then_act(module):
            exec_module(module)
            action(module)

        spec.loader.exec_module = exec_then_act  # this spec's own loader object, not a shared one
        return spec
