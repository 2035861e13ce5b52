"""Infotext fields for references, as A1111 and its ControlNet extension write them.

sd-webui-controlnet adds one key per unit to A1111's `extra_generation_params`, its value a
quoted list of `Label: value` pairs::

    ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1,
    Resize Mode: Crop and Resize, Low Vram: False, Processor Res: 512, Threshold A: 100,
    Threshold B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: False, Control Mode: Balanced"

(one line in the file). img2img adds `Denoising strength`, inpainting `Mask blur`.
"""
from __future__ import annotations

from typing import Callable

from loraflow.generate.control.references import References


def _num(x: float) -> str:
    return f"{x:g}"


def reference_params(refs: References, config, width: int, height: int,
                     model_label: Callable[[str | None], str]) -> dict:
    """A1111 infotext keys for the job's references; `model_label(path)` gives `name [hash]`."""
    params: dict[str, str | float] = {}
    if refs.strength is not None:
        params["Denoising strength"] = refs.strength
    if refs.mask is not None:
        params["Mask blur"] = config.mask_blur
    for k, control in enumerate(refs.controls):
        unit = control.unit
        pairs = [("Module", control.module), ("Model", model_label(unit.model)), ("Weight", _num(unit.scale)),
                 ("Resize Mode", "Crop and Resize"), ("Low Vram", "False"),
                 # maps are made at the output size, which A1111 calls "Pixel Perfect"
                 ("Processor Res", str(min(width, height)))]
        if unit.type == "canny":
            pairs += [("Threshold A", str(config.canny_low_threshold)), ("Threshold B", str(config.canny_high_threshold))]
        pairs += [("Guidance Start", _num(unit.start)), ("Guidance End", _num(unit.end)), ("Pixel Perfect", "True"),
                  ("Control Mode", "ControlNet is more important" if refs.guess_mode else "Balanced")]
        params[f"ControlNet {k}"] = ", ".join(f"{label}: {value}" for label, value in pairs)
    return params
