"""LoRA training: `train(TrainConfig | dict) -> TrainResult` (no torch at import time).

    from loraflow.train import TrainConfig, train
    result = train(TrainConfig.from_file("examples/train/kolors-anime.yaml"))
    result.lora_path  # OUTPUT/NAME.safetensors, kohya format

The package is also called: `loraflow.train(config_or_file, **options)` is `loraflow.train.api.train`.
"""
from loraflow import callable_package
from loraflow.train.config import TrainConfig
from loraflow.train.trainer import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]

callable_package(__name__, "loraflow.train.api", "train")
