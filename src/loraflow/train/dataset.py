"""Which images train, with which caption, how often: the data layer's training manifest.

`loraflow.data.training_manifest.read_training_items` reads every export of the data step
(DiffSynth `train/metadata.csv`, imagefolder `metadata.jsonl`, kohya `N_name/` folders, data-juicer
jsonl). Training adds two things: there must be something to train on, and data-juicer's
placeholder tokens are not caption text (the tutorial's jsonl has "<__dj__image>\\n二次元").
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from loraflow.errors import InputError

DJ_TOKENS = ("<__dj__image>", "<|__dj__eoc|>")  # data-juicer's default special tokens


def clean_caption(text: str) -> str:
    for token in DJ_TOKENS:
        text = text.replace(token, "")
    return text.strip()


def read_items(path: str | Path, mask_column: str = "mask") -> list:
    """Items with `.image_path`, `.caption`, `.repeats`, `.mask`; one-line errors name the file."""
    from loraflow.data.training_manifest import read_training_items

    items = [dataclasses.replace(i, caption=clean_caption(i.caption)) for i in read_training_items(path, mask_column)]
    if not items:
        raise InputError(f"{path}: no training images found")
    return items
