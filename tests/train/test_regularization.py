"""Regularization images: one reg image per training image each epoch (kohya), mixed into the batches."""
from __future__ import annotations

from collections import Counter

import pytest
import torch

from train_helpers import base_config, make_shapes_dataset
from loraflow.train.config import TrainConfig
from loraflow.train.regularization import sample_weights


@pytest.fixture(scope="module")
def reg_dataset(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("reg"), n=7, seed=9)


def _epoch_counts(data, epoch: int) -> Counter:
    counts: Counter = Counter()
    for m in range(epoch * data.plan.batches_per_epoch, (epoch + 1) * data.plan.batches_per_epoch):
        counts.update(e.item for e in data.plan.batch(m))
    return counts


def test_one_reg_image_per_training_image_each_epoch(tmp_path, shapes_dataset, reg_dataset):
    from loraflow.train.trainer import read_data

    config = TrainConfig.from_dict(base_config(tmp_path, shapes_dataset, reg_dataset=str(reg_dataset), batch_size=4))
    data = read_data(config, text_cached=True)
    assert len(data.train_items) == 24 and len(data.reg_items) == 7
    reg = set(data.reg_items)
    for epoch in range(2):
        counts = _epoch_counts(data, epoch)
        assert sum(n for i, n in counts.items() if i in reg) == 24  # 24 training sightings -> 24 reg sightings
        assert all(counts[i] == 1 for i in range(24))
        assert sorted(counts[i] for i in reg) == [3, 3, 3, 3, 4, 4, 4]  # 24 = 7 x 3 + 3, spread evenly
    mixed = [b for b in data.plan.epoch(0) if {e.item in reg for e in b} == {True, False}]
    assert mixed  # reg and training images share batches


def test_fixed_reg_repeats_and_kohya_spelling(tmp_path, shapes_dataset, reg_dataset):
    from loraflow.train.trainer import read_data

    config = TrainConfig.from_dict(base_config(tmp_path, shapes_dataset, reg_data_dir=str(reg_dataset),
                                               reg_repeats=2, prior_loss_weight=0.5))
    data = read_data(config, text_cached=True)
    counts = _epoch_counts(data, 0)
    assert [counts[i] for i in data.reg_items] == [2] * 7 and config.reg_weight == 0.5


def test_reg_samples_are_weighted():
    class E:
        def __init__(self, item):
            self.item = item

    assert torch.equal(sample_weights([E(0), E(5), E(1)], {5}, 0.25), torch.tensor([1.0, 0.25, 1.0]))
    assert sample_weights([E(0), E(1)], {5}, 0.25) is None
    assert sample_weights([E(5)], {5}, 1.0) is None


def test_reg_weight_scales_the_reg_images_loss(tmp_path, shapes_dataset, reg_dataset):
    """Step 1 sees the same batch and noise for every weight, so its loss is (train + w * reg) / B:
    linear in w, and larger with w when the batch holds reg images."""
    from loraflow.train.trainer import train

    losses = []
    for w in (0.0, 1.0, 2.0):
        result = train(base_config(tmp_path, shapes_dataset, reg_dataset=str(reg_dataset), reg_weight=w,
                                   max_steps=1, output=str(tmp_path / f"w{w}")))
        losses.append(result.losses[0][1])
    assert losses[1] > losses[0]
    assert losses[2] - losses[1] == pytest.approx(losses[1] - losses[0], rel=1e-4)
