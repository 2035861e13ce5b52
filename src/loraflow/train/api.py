"""`loraflow.train(...)`: LoRA training from Python, with the options of `loraflow train`.

    import loraflow
    result = loraflow.train("examples/train/kolors-anime.yaml", max_steps=200)   # file + overrides
    result = loraflow.train(dataset="data/striped", output="outputs/striped", max_steps=50)
    result.lora_path, result.losses, result.loss_figure                          # file, (step, loss), plot

The trainer draws a `tqdm.auto` bar (a widget in Jupyter); `progress(step, total)` is also called
after every optimizer step, and an exception it raises stops the run with its checkpoints intact.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from loraflow.train.config import TrainConfig
from loraflow.train.trainer import train as run


def train_config(config: str | Path | dict | TrainConfig | None = None, **options: Any) -> TrainConfig:
    """Defaults < `config` (a YAML/JSON/TOML file, a dict or a TrainConfig) < keyword options,
    as `loraflow train --config FILE --flag ...` merges them; errors name the key. `model=None` is
    no choice, as in `loraflow.load(None)`: the config's model, else the demo model."""
    if "model" in options and options["model"] is None:
        options = {k: v for k, v in options.items() if k != "model"}
    if config is None:
        base = TrainConfig.from_dict({}, "train")
    elif isinstance(config, TrainConfig):
        base = config
    elif isinstance(config, dict):
        base = TrainConfig.from_dict(config, "train")
    else:
        base = TrainConfig.from_file(config)
    return base.merged(options, "train") if options else base


def train(config: str | Path | dict | TrainConfig | None = None,
          progress: Callable[[int, int], None] | None = None, **options: Any):
    """Train a LoRA; returns the `TrainResult` (`lora_path`, `output`, `steps`, `losses`, `loss_curve`
    PNG, `stats` with timings). Options are those of `loraflow train --help`."""

    return run(train_config(config, **options), progress=progress)
