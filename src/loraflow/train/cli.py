"""`loraflow train`: a thin shell over `loraflow.train.trainer.train` (no torch at import time).

    loraflow train --config train.yaml [--lora-rank 32 ...]
    accelerate launch --num_processes 2 -m loraflow train --config train.yaml   # multi-GPU / multi-node
"""
from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from loraflow.train.config import TrainConfig

    parser = subparsers.add_parser(
        "train",
        help="fine-tune a LoRA (Kolors, SDXL, SD1.5) on an image dataset",
        description="Train a LoRA. Options come from --config (YAML/JSON/TOML) and flags; flags win. "
        "DiffSynth-Studio argument names (--dataset-path, --max-epochs, --precision 16-mixed, ...) are accepted.",
    )
    parser.add_argument("--config", help="config file (YAML, JSON or TOML) with any of the options below")
    # --random-crop is a flag of its own; --no-center-crop means the same
    TrainConfig.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from loraflow.train.config import TrainConfig
    from loraflow.train.trainer import train

    config = TrainConfig.from_cli(args, args.config)
    train(config)
    return 0
