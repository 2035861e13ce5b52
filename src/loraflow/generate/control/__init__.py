"""Reference control for `generate` and `storyboard`: ControlNet, img2img and inpainting.

    units.py       ControlUnit (`TYPE:IMAGE[:SCALE[:START:END]]`) and its parser
    preprocess.py  reference image -> control map (canny, lineart, color, tile; raw maps)
    model.py       ControlNet loading; the ControlNet class (Kolors text_proj, skipping scale 0)
    pipelines.py   the task's diffusers pipeline over the loaded pipeline's components
    references.py  a job's control maps / init image / mask -> pipeline arguments
    infotext.py    `ControlNet 0: "Module: ..."`, `Denoising strength`, `Mask blur`
    tiny.py        tiny ControlNets for tests

Kept light: importing this package does not import torch or diffusers.
"""
from __future__ import annotations

from loraflow.generate.control.units import CONTROL_TYPES, PREVIOUS, ControlUnit, parse_control_arg

__all__ = ["CONTROL_TYPES", "PREVIOUS", "ControlUnit", "parse_control_arg"]
