"""`loraflow train` options: file + flags, DiffSynth aliases, one-line errors."""
from __future__ import annotations

from pathlib import Path

import pytest

from loraflow.cli import main
from loraflow.errors import ConfigError
from loraflow.train.config import TrainConfig

EXAMPLE = Path(__file__).parents[2] / "examples" / "train" / "kolors-anime.yaml"


def test_diffsynth_names_are_aliases():
    config = TrainConfig.from_dict({
        "lora_rank": 16, "lora_alpha": 4.0, "dataset_path": "data/x", "output_path": "./models", "max_epochs": 1,
        "center_crop": True, "use_gradient_checkpointing": True, "precision": "16-mixed",
        "pretrained_fp16_vae_path": "vae.safetensors",
        "accumulate_grad_batches": 2,
    })
    assert (config.dataset, config.output, config.epochs) == ("data/x", "./models", 1)
    assert config.mixed_precision == "fp16" and config.gradient_checkpointing and config.vae == "vae.safetensors"
    assert config.gradient_accumulation == 2


def test_example_reproduces_the_tutorial_run():
    config = TrainConfig.from_file(EXAMPLE)
    assert config.family == "kolors" and config.lora_rank == 16 and config.lora_alpha == 4.0
    assert config.center_crop and config.gradient_checkpointing and config.mixed_precision == "fp16"
    assert config.epochs == 1 and config.resolution == 1024


def test_flags_override_file(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    TrainConfig.add_arguments(parser)
    args = parser.parse_args(["--lora-rank", "32", "--random-crop", "--precision", "bf16-mixed",
                              "--validation-prompt", "a", "--validation-prompt", "b", "--max-epochs", "3"])
    config = TrainConfig.from_cli(args, EXAMPLE)
    assert config.lora_rank == 32 and config.lora_alpha == 4.0  # flag wins, file fills the rest
    assert config.random_crop and not config.center_crop
    assert config.mixed_precision == "bf16" and config.validation_prompt == ["a", "b"] and config.epochs == 3


@pytest.mark.parametrize("data, message", [
    ({"lora_rnk": 4}, "unknown key 'lora_rnk'"),
    ({"lora_rank": 0}, "key 'lora_rank' = 0"),
    ({"precision": "8-mixed"}, "key 'mixed_precision'"),
    ({"lora_targets": "everything"}, r"key 'lora_targets' = 'everything'.*'attn\+ff'"),
    ({"family": "kolors", "train_text_encoder": True}, "ChatGLM"),
    ({"caption_dropout": 1.5}, "key 'caption_dropout'"),
])
def test_bad_config_one_line_errors(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        TrainConfig.from_dict(data)
    assert "\n" not in str(info.value)


def test_cli_bad_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "train.yaml"
    bad.write_text("model: tiny:sdxl\nlora_rnak: 4\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "unknown key 'lora_rnak'" in err and "\n" not in err


def test_cli_missing_dataset_exits_2(tmp_path, capsys):
    assert main(["train", "--model", "tiny:sdxl", "--output", str(tmp_path / "o")]) == 2
    assert "missing required key 'dataset'" in capsys.readouterr().err
    assert main(["train", "--model", "tiny:sdxl", "--dataset", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "o")]) == 2
    assert "not found" in capsys.readouterr().err


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys; from loraflow.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_target_presets_match_the_option():
    from typing import get_args

    from loraflow.train.config import TARGET_PRESETS

    assert set(get_args(TrainConfig.model_fields["lora_targets"].annotation)) == set(TARGET_PRESETS)
