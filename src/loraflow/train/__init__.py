"""LoRA training: `train(TrainConfig | dict) -> TrainResult` (no torch at import time).

    from loraflow.train import TrainConfig, train
    result = train(TrainConfig.from_file("examples/train/kolors-anime.yaml"))
    result.lora_path  # OUTPUT/NAME.safetensors, kohya format
"""
from loraflow.train.config import TrainConfig
from loraflow.train.trainer import TrainingDiverged, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingDiverged", "train"]
