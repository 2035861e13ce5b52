"""Loaded models kept between jobs: an LRU of `GenerationSession`s keyed by what was loaded.

Loading a real SDXL/Kolors model takes tens of seconds, so the worker keeps the last one or two;
the least recently used is dropped (and its accelerator memory freed) when another is needed.
Each entry owns everything built from its model (`session.derived`: img2img / inpaint / ControlNet
pipelines and the ControlNets loaded for it), so dropping the entry frees all of it.
"""
from __future__ import annotations

import gc
import threading
from collections import OrderedDict

from loraflow.generate.session import GenerationSession
from loraflow.models.loading import load_pipeline


class ModelCache:
    def __init__(self, size: int = 1, device: str = "auto"):
        self.size = size
        self.device = device
        self._sessions: OrderedDict[tuple, GenerationSession] = OrderedDict()
        self._lock = threading.Lock()
        self.loads = 0  # how many times a model was actually loaded (tests check the cache works)

    def session(self, model: str, vae: str | None = None, dtype: str = "auto", device: str | None = None,
                family: str | None = None) -> GenerationSession:
        """A `GenerationSession` over `model` (already resolved to a path or `tiny:*`)."""
        device = self.device if device in (None, "", "auto") else device
        key = (model, vae, dtype, device, family)
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
            while len(self._sessions) >= self.size:
                _, evicted = self._sessions.popitem(last=False)
                evicted.derived.clear()  # a job still holding the session must not keep these alive
                del evicted
                _free_memory()
        session = GenerationSession(load_pipeline(model, family=family, vae=vae, dtype=dtype, device=device))
        with self._lock:
            self.loads += 1
            self._sessions[key] = session
        return session

    def loaded(self) -> list[str]:
        with self._lock:
            return [key[0] for key in self._sessions]

    def clear(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.derived.clear()
            self._sessions.clear()
        _free_memory()


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
