"""Held-out evaluation: deterministic numbers, the early-stop decision, the best checkpoint."""
from __future__ import annotations

import copy
import json
import math
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
    assert [e["step"] for e in a] == [0, 2, 4]  # step 0: the base model with the zero-initialised LoRA
    assert a == b  # bit-identical floats through JSON
    assert len({e["loss"] for e in a}) == 3  # the weights changed, the inputs did not
    # lora_B starts at zero: at step 0 the LoRA changes nothing; training moves it further and further
    assert a[0]["effect"] == 0.0 and 0 < a[1]["effect"] < a[2]["effect"]
    assert all(e["scores"] == {} for e in a)  # no validation images in this run
    table = (first.output / "evaluation.md").read_text()
    assert "recommended" in table and "LoRA effect" in table
    assert f"| 4 | {a[2]['loss']:.5f} |" in table and f"| {a[2]['effect']:.5f} |" in table
    assert (first.output / "evaluation.png").is_file()


def test_early_stop_fires_and_keeps_the_best_lora(tmp_path, shapes_dataset, monkeypatch):
    from loraflow.train import evaluation
    from loraflow.train.trainer import train

    curve = iter([4.0, 3.0, 2.0, 2.5, 2.6, 2.7, 2.8])  # evaluations at steps 0, 1, 2, ...: best at step 2
    monkeypatch.setattr(evaluation.HeldOut, "measure", lambda self, *a: (next(curve), 0.0))
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


def test_lora_effect_equals_a_recomputation_with_lora_b_zeroed(tmp_path, shapes_dataset, monkeypatch):
    """The effect column, recomputed by hand: the same UNet inputs through a copy of the trained UNet
    whose lora_B weights are zeroed (the LoRA's delta is B @ A, so this is the base model)."""
    from loraflow.train import evaluation
    from loraflow.train.trainer import train

    calls = []  # (unet, predict's arguments after the unet) of every held-out prediction

    def recording(model, net, *args):
        calls.append((model, net, args))
        return predict(model, net, *args)

    predict = evaluation.predict
    monkeypatch.setattr(evaluation, "predict", recording)
    config = base_config(tmp_path, shapes_dataset, max_steps=2, eval_every=2, eval_split=0.25, learning_rate=1e-2)
    result = train(config)
    last = _evaluations(result.output, 2)[-1]
    assert last["step"] == 2 and last["effect"] > 0
    lora_on = calls[-12::2]  # the last evaluation: 6 held-out images, each predicted with the LoRA on, then off
    model, net, _ = lora_on[0]
    base = copy.deepcopy(net).eval()
    with torch.no_grad():
        for name, p in base.named_parameters():
            if "lora_B" in name:
                p.zero_()
        changed = total = 0.0
        for _, _, args in lora_on:
            on, off = predict(model, net, *args).float(), predict(model, base, *args).float()
            changed += (on - off).square().sum().item()
            total += off.square().sum().item()
    assert last["effect"] == pytest.approx(math.sqrt(changed / total), rel=1e-5)


def test_evaluations_resume_bit_equal(tmp_path, shapes_dataset):
    from loraflow.train.trainer import train

    config = base_config(tmp_path, shapes_dataset, max_steps=4, save_every=2, eval_every=2, eval_split=0.25,
                         learning_rate=1e-2)
    full = train(config)
    resumed = train(dict(config, output=str(tmp_path / "resumed"),
                         resume=str(full.output / "checkpoints" / "step-000002")))
    assert _evaluations(resumed.output, 4) == _evaluations(full.output, 4)
    assert (resumed.output / "evaluation.md").read_text() == (full.output / "evaluation.md").read_text()


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
