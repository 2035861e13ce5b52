"""Regularization (prior-preservation) images, mixed into training as kohya sd-scripts does.

`reg_dataset` is a folder of class images with their own captions (any layout `read_items` reads,
e.g. kohya `1_person/`). By default each epoch sees exactly as many regularization images as
training images (repeats included): kohya's "one reg image per train image" (`train_util.py`,
`DreamBoothDataset`: reg images are repeated or cut to the training count). The count is spread
over the reg images as evenly as possible; the extra sightings go to images chosen by seed (when
there are more reg images than training sightings, a seed-chosen subset is used). `reg_repeats`
instead gives every reg image a fixed number of sightings per epoch.

Reg images are appended to the run's items and shuffled into the same bucketed batches as the
training images; their loss is multiplied by `reg_weight` (kohya `prior_loss_weight`).
"""
from __future__ import annotations

import dataclasses
import random
from loraflow.train.dataset import read_items


def add_regularization(items: list, config) -> tuple[list, list[int]]:
    """(items + reg items with their per-epoch repeats, indices of the reg items)."""
    if not config.reg_dataset:
        return items, []
    reg = read_items(config.reg_dataset)
    if config.reg_repeats:
        repeats = [config.reg_repeats] * len(reg)
    else:
        train_total = sum(i.repeats for i in items)  # held-out items have 0 repeats
        base, extra = divmod(train_total, len(reg))
        lucky = set(random.Random(f"{config.seed}:reg-repeats").sample(range(len(reg)), extra))
        repeats = [base + (k in lucky) for k in range(len(reg))]
    reg = [dataclasses.replace(item, repeats=n) for item, n in zip(reg, repeats)]
    return items + reg, list(range(len(items), len(items) + len(reg)))


def sample_weights(entries: list, reg_items: set[int], reg_weight: float):
    """(B,) loss weight per sample: `reg_weight` for reg images, 1 otherwise; None when all are 1."""
    import torch

    if reg_weight == 1.0 or not any(e.item in reg_items for e in entries):
        return None
    return torch.tensor([reg_weight if e.item in reg_items else 1.0 for e in entries])
