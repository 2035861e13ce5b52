"""Objects built from one loaded pipeline: task pipelines (img2img, inpaint, ControlNet) and the
ControlNets loaded for it.

A `GenerationSession` owns one `DerivedModels`; the server's model cache owns the session. So
everything here lives exactly as long as the model it was built from: evicting the model from the
cache drops these too, and nothing is keyed by `id()` (a recycled id could match another model).
"""
from __future__ import annotations

from typing import Any
from loraflow.generate.control.pipelines import task_pipeline


class DerivedModels:
    def __init__(self, pipe, family):
        self._pipe = pipe
        self._family = family
        self._controlnets: dict[str, Any] = {}  # ControlNet file -> loaded model, loaded once
        self._pipelines: dict[tuple[str, tuple[str, ...]], Any] = {}  # (task, ControlNet files) -> pipeline

    def controlnet(self, path: str):
        """The ControlNet in `path`, loaded once, on the UNet's device and dtype."""
        if path not in self._controlnets:
            from loraflow.generate.control.model import load_controlnet  # imports diffusers

            unet = self._pipe.unet
            self._controlnets[path] = load_controlnet(path, unet, dtype=unet.dtype, device=self._pipe.device)
        return self._controlnets[path]

    def pipeline(self, task: str, controlnets: tuple[str, ...] = ()):
        """The family's pipeline for `task` with these ControlNets, over the loaded pipeline's modules
        (the loaded pipeline itself for plain text-to-image). Built once per (task, ControlNets)."""
        key = (task, tuple(controlnets))
        if key not in self._pipelines:
            nets = [self.controlnet(path) for path in controlnets]
            self._pipelines[key] = task_pipeline(self._pipe, self._family, task, nets)
        return self._pipelines[key]

    def clear(self) -> None:
        self._pipelines.clear()
        self._controlnets.clear()
