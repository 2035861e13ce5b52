"""Which images train, with which caption, how often: the data layer's training manifest.

`loraflow.data.training_manifest.read_training_items` reads every export of the data step
(DiffSynth `train/metadata.csv`, imagefolder `metadata.jsonl`, kohya `N_name/` folders, data-juicer
jsonl). Training adds two things: there must be something to train on, and data-juicer's
placeholder tokens are not caption text (the tutorial's jsonl has "<__dj__image>\\n二次元").
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from loraflow.data.text_rules import strip_special_tokens
from loraflow.data.training_manifest import read_training_items
from loraflow.errors import InputError

def read_items(path: str | Path, mask_column: str = "mask") -> list:
    """Items with `.image_path`, `.caption`, `.repeats`, `.mask`; one-line errors name the file."""
    items = [dataclasses.replace(i, caption=strip_special_tokens(i.caption))
             for i in read_training_items(path, mask_column)]
    if not items:
        raise InputError(f"{path}: no training images found")
    return items
