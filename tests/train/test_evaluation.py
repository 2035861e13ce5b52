"""Held-out evaluation: deterministic numbers, the early-stop decision, the best checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import base_config, make_shapes_dataset
from loraflow.train.evaluation import fixed_timesteps, should_stop


def test_should_stop_on_a_constructed_rising_curve():
    falling_then_rising = [1.0, 0.8, 0.7, 0.75, 0.8, 0.9]
    # best at index 2; it is 1, 2, 3 evaluations old after indices 3, 4, 5
    assert [should_stop(falling_then_rising[:n], 2) for n in range(1, 7)] == [False, False, False, False, True, True]
    assert not should_stop([1.0, 0.8, 0.85, 0.7], 2)  # a noisy bump that recovers
    assert should_stop([0.5, 0.5, 0.5], 2)  # a tie is not an improvement
    assert not should_stop([], 1)


def test_fixed_timesteps_are_centres_of_equal_slices():
    assert fixed_timesteps(1000, 4) == [125, 375, 625, 875]
    assert fixed_timesteps(1100, 1) == [550]


def _evaluations(output: Path, step: int) -> list:
    state = json.loads((output / "checkpoints" / f"step-{step:06d}" / "state.json").read_text())
    return state["evaluations"]


def test_held_out_loss_is_identical_across_runs(tmp_path, shapes_dataset):
    from loraflow.train.trainer import train

    config = base_config(tmp_path, shapes_dataset, max_steps=4, eval_every=2, eval_split=0.25, learning_rate=1e-2)
    first = train(config)
    second = train(dict(config, output=str(tmp_path / "again")))
    a, b = _evaluations(first.output, 4), _evaluations(second.output, 4)
    assert [s for s, _ in a] == [0, 2, 4]  # step 0: the base model with the zero-initialised LoRA
    assert a == b  # bit-identical floats through JSON
    assert len({v for _, v in a}) == 3  # the weights changed, the inputs did not
    assert "recommended" in (first.output / "evaluation.md").read_text()
    assert (first.output / "evaluation.png").is_file()


def test_early_stop_fires_and_keeps_the_best_lora(tmp_path, shapes_dataset, monkeypatch):
    from loraflow.train import evaluation
    from loraflow.train.trainer import train

    curve = iter([4.0, 3.0, 2.0, 2.5, 2.6, 2.7, 2.8])  # evaluations at steps 0, 1, 2, ...: best at step 2
    monkeypatch.setattr(evaluation.HeldOut, "loss", lambda self, *a: next(curve))
    held_out = make_shapes_dataset(tmp_path / "held_out", n=2, seed=5)  # the training data stays the same
    config = base_config(tmp_path, shapes_dataset, max_steps=8, eval_every=1, early_stop=2, learning_rate=1e-2,
                         eval_dataset=str(held_out))
    result = train(config)
    assert result.steps == 4  # evaluations at 3 and 4 did not beat step 2
    table = (result.output / "evaluation.md").read_text()
    assert "| 2 | 2.00000 |" in table and "recommended: lora-best.safetensors" in table.split("| 2 | 2.00000 |")[1]
    # the kept best equals a plain 2-step run (evaluation does not disturb training)
    plain = train(dict(config, output=str(tmp_path / "plain"), max_steps=2, eval_every=None, early_stop=None,
                       eval_dataset=None))
    best, ref = load_file(result.output / "lora-best.safetensors"), load_file(plain.lora_path)
    assert best.keys() == ref.keys()
    for k in ref:
        assert torch.equal(best[k], ref[k]), k


def test_held_out_items_are_never_trained_on(tmp_path, shapes_dataset):
    from loraflow.train.config import TrainConfig
    from loraflow.train.trainer import read_data

    config = TrainConfig.from_dict(base_config(tmp_path, shapes_dataset, eval_every=5, eval_split=0.25))
    data = read_data(config, text_cached=True)
    assert len(data.eval_items) == 6 and len(data.train_items) == 18
    seen = {e.item for m in range(data.plan.batches_per_epoch) for e in data.plan.batch(m)}
    assert seen == set(range(18)) and not seen & set(data.eval_items)


def test_early_stop_needs_eval_every():
    from loraflow.errors import ConfigError
    from loraflow.train.config import TrainConfig

    with pytest.raises(ConfigError, match="early_stop needs eval_every"):
        TrainConfig.from_dict({"dataset": "d", "early_stop": 3})
