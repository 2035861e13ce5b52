"""Exponential moving average of the trainable (LoRA) weights.

The averaging is diffusers' `training_utils.EMAModel` (the one its example trainers use). EMA
update k (1-based) with w = ceil(ema_warmup / ema_every) warm-up updates uses

    t = k - w - 1;   decay_k = 0 if t <= 0 else min(ema_decay, (1 + t) / (10 + t))
    shadow <- shadow - (1 - decay_k) * (shadow - weight)

so the shadow copies the weights until the warm-up is over and then averages with a decay that
ramps up, instead of being dominated by the LoRA's initial (zero-update) weights. We update every
`ema_every` optimizer steps (cheaper for large LoRAs; kohya-style setups use 1). The shadow weights
and the update count go into checkpoints so a resumed run's EMA is bit-equal to an uninterrupted one.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

from loraflow.errors import ConfigError

_PREFIX = "ema."  # checkpoint tensor names: ema.<index in trainable_parameters()>


class LoraEMA:
    def __init__(self, parameters: list, decay: float, warmup_steps: int, every: int):
        from diffusers.training_utils import EMAModel

        self.parameters, self.every = list(parameters), every
        # EMAModel counts its own updates; our warm-up is given in optimizer steps
        self.model = EMAModel(self.parameters, decay=decay, min_decay=0.0,
                              update_after_step=math.ceil(warmup_steps / every), foreach=False)

    @classmethod
    def from_config(cls, config, parameters: list) -> "LoraEMA | None":
        if not config.ema:
            return None
        return cls(parameters, config.ema_decay, config.ema_warmup, config.ema_every)

    def after_step(self, step: int) -> None:
        """Called after optimizer step `step` (1-based) has been applied."""
        if step % self.every == 0:
            self.model.step(self.parameters)

    @contextmanager
    def applied(self):
        """The EMA weights in the model for the duration (validation, saving); the trained ones after."""
        self.model.store(self.parameters)
        self.model.copy_to(self.parameters)
        try:
            yield
        finally:
            self.model.restore(self.parameters)

    def state(self) -> tuple[dict, dict]:
        """(tensors for the checkpoint's safetensors file, JSON-able counters)."""
        tensors = {f"{_PREFIX}{i}": p.detach().float().cpu() for i, p in enumerate(self.model.shadow_params)}
        return tensors, {"ema_updates": self.model.optimization_step}

    def load(self, tensors: dict, meta: dict, source: str) -> None:
        shadow = [tensors.get(f"{_PREFIX}{i}") for i in range(len(self.parameters))]
        if any(t is None for t in shadow) or "ema_updates" not in meta:
            raise ConfigError(f"resume: {source} has no EMA state (trained without ema); resume with ema off "
                              "or start a new run")
        for target, saved in zip(self.model.shadow_params, shadow):
            target.copy_(saved.to(target.device, target.dtype))
        self.model.optimization_step = int(meta["ema_updates"])
