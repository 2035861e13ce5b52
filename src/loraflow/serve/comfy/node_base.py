"""What every node declares: its inputs (as ComfyUI's `INPUT_TYPES` shows them in /object_info), its
output types and a `run(ctx, node_id, **inputs)`; the node sets (nodes.py, nodes_ipadapter.py) build on it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from loraflow.serve.comfy.values import Shown

MAX_RESOLUTION = 16384  # ComfyUI's bound on pixel sizes and offsets in node inputs


@dataclass
class Input:
    type: str  # INT FLOAT STRING BOOLEAN COMBO or a link type
    options: dict = field(default_factory=dict)
    choices: Callable[[Any], list[str]] | tuple[str, ...] | None = None  # COMBO: values or paths -> values
    optional: bool = False

    def spec(self, paths) -> list:
        """As ComfyUI's /object_info shows it: `["INT", {...}]`, `[[choices...], {...}]`, `["MODEL"]`."""
        if self.type == "COMBO":
            values = self.choices(paths) if callable(self.choices) else list(self.choices)
            return [values, self.options] if self.options else [values]
        return [self.type, self.options] if self.options else [self.type]


def INT(default: int, lo: int = 0, hi: int = 2**64 - 1, step: int = 1, **kw) -> Input:
    return Input("INT", {"default": default, "min": lo, "max": hi, "step": step, **kw})


def FLOAT(default: float, lo: float, hi: float, step: float = 0.01, **kw) -> Input:
    return Input("FLOAT", {"default": default, "min": lo, "max": hi, "step": step, **kw})


def STRING(default: str = "", multiline: bool = False, **kw) -> Input:
    return Input("STRING", {"default": default, "multiline": multiline, **kw})


def COMBO(choices, **kw) -> Input:
    return Input("COMBO", dict(kw), choices)


def LINK(type_: str, optional: bool = False) -> Input:
    return Input(type_, optional=optional)


class Node:
    CATEGORY: ClassVar[str] = "loaders"
    DESCRIPTION: ClassVar[str] = ""
    INPUTS: ClassVar[dict[str, Input]] = {}
    OUTPUTS: ClassVar[tuple[str, ...]] = ()
    OUTPUT_NAMES: ClassVar[tuple[str, ...] | None] = None
    OUTPUT_NODE: ClassVar[bool] = False
    FILE_INPUTS: ClassVar[dict[str, str]] = {}  # input -> file kind; its mtime joins the cache key

    def run(self, ctx, node_id: str, **inputs) -> tuple | Shown:
        """Returns the outputs tuple, or `Shown(outputs, ui)` for output nodes (which also get the
        hidden inputs `prompt` and `extra_pnginfo`, as in ComfyUI)."""
        raise NotImplementedError

    @classmethod
    def info(cls, name: str, paths) -> dict:
        required = {k: v.spec(paths) for k, v in cls.INPUTS.items() if not v.optional}
        optional = {k: v.spec(paths) for k, v in cls.INPUTS.items() if v.optional}
        inputs = {"required": required, **({"optional": optional} if optional else {})}
        if cls.OUTPUT_NODE:
            inputs["hidden"] = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
        return {
            "input": inputs, "input_order": {k: list(v) for k, v in inputs.items() if k != "hidden"},
            "output": list(cls.OUTPUTS), "output_is_list": [False] * len(cls.OUTPUTS),
            "output_name": list(cls.OUTPUT_NAMES or cls.OUTPUTS), "name": name, "display_name": name,
            "description": cls.DESCRIPTION or (cls.__doc__ or "").strip().splitlines()[0],
            "python_module": "loraflow", "category": cls.CATEGORY, "output_node": cls.OUTPUT_NODE,
        }
