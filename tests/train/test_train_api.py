"""`loraflow.train(config_or_file, progress=..., **options)`: the trainer with the command's option
merging (defaults < file < keyword options), a progress callback, and errors naming the key."""
from __future__ import annotations

import pytest
import yaml

import loraflow
from loraflow.errors import ConfigError
from train_helpers import base_config


def test_file_then_keyword_options(tmp_path, shapes_dataset):
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(base_config(tmp_path, shapes_dataset, max_steps=50, lora_rank=8)))
    seen = []
    result = loraflow.train(config_file, max_steps=2, progress=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 2), (2, 2)]  # the keyword option beat the file's 50
    assert result.steps == 2 and result.lora_path.is_file() and len(result.losses) == 2
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["lora_rank"] == 8 and saved["max_steps"] == 2  # the file's value where no option overrode it


def test_bad_option_names_the_key(tmp_path, shapes_dataset):
    with pytest.raises(ConfigError, match="'lora_rank'"):
        loraflow.train(base_config(tmp_path, shapes_dataset), lora_rank=0)
    with pytest.raises(ConfigError, match="unknown key 'max_stepz'"):
        loraflow.train(max_stepz=3)


def test_model_none_keeps_the_files_model(tmp_path, shapes_dataset):
    from loraflow.train.api import train_config

    assert train_config(base_config(tmp_path, shapes_dataset), model=None).model == "tiny:sdxl"
    assert train_config(model=None).model is None  # nothing chosen: the trainer takes the demo model
