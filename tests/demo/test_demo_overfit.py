"""The demo overfit run (examples/train/demo-overfit.yaml) on the demo model: the held-out loss falls
while the LoRA learns the stripes, rises again while it learns the four training pictures, early stop
ends the run and the table recommends the lowest held-out loss."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from loraflow.demo.dataset import OVERFIT_SCENE, write_overfit_dataset

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train" / "demo-overfit.yaml"


def test_overfit_data_share_only_the_style(tmp_path):
    from loraflow.demo.checker import read_image
    from PIL import Image

    out = write_overfit_dataset(tmp_path / "data")
    for split, count in (("train", 4), ("held_out", 16)):
        rows = (out / split / "metadata.csv").read_text(encoding="utf-8-sig").splitlines()
        assert rows[0] == "file_name,text" and len(rows) == count + 1
        assert {row.split(",")[1] for row in rows[1:]} == {"striped"}  # captions tell no picture apart
    train = [read_image(Image.open(p)) for p in sorted((out / "train").glob("*.png"))]
    held = [read_image(Image.open(p)) for p in sorted((out / "held_out").glob("*.png"))]
    assert {(r.colour, r.position, r.background) for r in train} == {
        (OVERFIT_SCENE.colour, OVERFIT_SCENE.position, OVERFIT_SCENE.background)}
    for r in held:  # read back from the pixels: nothing in common with the training scene but stripes
        assert r.colour != OVERFIT_SCENE.colour and r.position != OVERFIT_SCENE.position
        assert r.background != OVERFIT_SCENE.background and r.stripes > 0.2


@pytest.mark.slow  # about 14 s on one CPU thread: 100 steps of the demo model
def test_demo_overfit_run_stops_at_its_lowest_held_out_loss(tmp_path):
    from loraflow.train.trainer import train

    config = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    data = write_overfit_dataset(tmp_path / "data", n_held_out=8)
    # the example's training as it is; fewer, cheaper evaluations (they never change the training:
    # test_evaluation.py's best-LoRA test) and a shorter patience keep this test short
    config.update(dataset=str(data / "train"), eval_dataset=str(data / "held_out"), output=str(tmp_path / "out"),
                  cache_dir=str(tmp_path / "cache"), eval_timesteps=4, early_stop=2)
    result = train(config)
    state = json.loads((result.output / "checkpoints" / f"step-{result.steps:06d}" / "state.json").read_text())
    steps, losses = [e["step"] for e in state["evaluations"]], [e["loss"] for e in state["evaluations"]]
    best = min(range(len(losses)), key=lambda i: (losses[i], i))
    # early stop: the run ended `early_stop` evaluations after its lowest held-out loss, long before max_steps
    assert result.steps < config["max_steps"] and len(losses) - 1 - best == config["early_stop"]
    assert steps[-1] == result.steps == steps[best] + config["early_stop"] * config["eval_every"]
    # falls: learning the stripes the held-out pictures share takes a large part of the base model's error away
    assert 0 < best and losses[best] < 0.7 * losses[0]
    # rises: every later evaluation is clearly worse than the best, not a tie on a plateau
    assert all(loss > 1.05 * losses[best] for loss in losses[best + 1:])
    # the recommendation is that step, and its LoRA is kept beside the (later, worse) last one
    recommended = [line for line in (result.output / "evaluation.md").read_text().splitlines() if "recommended" in line]
    assert len(recommended) == 1 and recommended[0].split("|")[1].strip() == str(steps[best])
    best, last = load_file(result.output / f"{config['name']}-best.safetensors"), load_file(result.lora_path)
    assert best.keys() == last.keys() and any(not torch.equal(best[k], last[k]) for k in best)
