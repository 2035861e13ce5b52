"""Optimizer and learning-rate schedule for the LoRA parameters."""
from __future__ import annotations

from loraflow.errors import ConfigError
from loraflow.train.config import TrainConfig


def make_optimizer(params: list, config: TrainConfig, device: str):
    import torch

    if config.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ConfigError("optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes)") from None
        return bnb.optim.AdamW8bit(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise ConfigError("optimizer: prodigy needs prodigyopt (pip install prodigyopt)") from None
        # Prodigy estimates the step size itself; learning_rate is a multiplier (1.0 recommended)
        return Prodigy(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    # fused AdamW is one kernel per step on CUDA; the default (foreach) elsewhere
    fused = str(device).startswith("cuda")
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay, fused=fused or None)


def make_lr_scheduler(optimizer, config: TrainConfig, total_steps: int):
    from diffusers.optimization import get_scheduler

    return get_scheduler(config.lr_scheduler, optimizer=optimizer,
                         num_warmup_steps=config.lr_warmup_steps, num_training_steps=total_steps)
