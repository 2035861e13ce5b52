"""Training validation reports the sample images' mean aesthetic / CLIP score when weights are set."""
from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from loraflow.train.trainer import train
from score_helpers import clip_scores_by_hand


def test_validation_scores_logged(tmp_path, tiny_clip_dir, head_files):
    train_dir = tmp_path / "data" / "train"
    train_dir.mkdir(parents=True)
    with open(train_dir / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        for i, colour in enumerate(["red", "blue", "green", "yellow"]):
            Image.new("RGB", (64, 64), colour).save(train_dir / f"{i}.png")
            writer.writerow([f"{i}.png", f"a {colour} square"])
    result = train(dict(model="tiny:sdxl", dataset=str(tmp_path / "data"), output=str(tmp_path / "out"),
                        resolution=64, lora_rank=4, batch_size=2, max_steps=2, seed=0, device="cpu",
                        cache_dir=str(tmp_path / "cache"), validation_every=1, validation_steps=1,
                        eval_every=1, eval_split=0.25,
                        validation_prompt=["a red square", "a (blue:1.2) square"],
                        validation_clip=str(tiny_clip_dir), validation_aesthetic=str(head_files["mlp"])))
    lines = [json.loads(line) for line in (result.output / "samples" / "scores.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for line in lines:
        assert len(line["images"]) == 2
        # the sample grid holds the two 64x64 images side by side; CLIP sees the prompts unweighted
        with Image.open(result.output / "samples" / f"step-{line['step']:06d}.png") as grid:
            images = [grid.crop((64 * k, 0, 64 * k + 64, 64)).convert("RGB") for k in range(2)]
        expected = clip_scores_by_hand(tiny_clip_dir, images, ["a red square", "a blue square"])
        assert [i["clip"] for i in line["images"]] == pytest.approx(expected, abs=1e-3)
        assert line["validation/clip"] == pytest.approx(sum(expected) / 2, abs=1e-3)
        assert line["validation/aesthetic"] == sum(i["aesthetic"] for i in line["images"]) / 2
    # the evaluation rows of steps 1 and 2 carry the same means (step 0 had no samples); resume keeps them
    state = json.loads((result.output / "checkpoints" / "step-000002" / "state.json").read_text())
    assert [(e["step"], e["scores"]) for e in state["evaluations"]] == [
        (0, {}), *((line["step"], {"clip": line["validation/clip"], "aesthetic": line["validation/aesthetic"]})
                   for line in lines)]
    table = (result.output / "evaluation.md").read_text()
    for line in lines:
        assert f"| {line['validation/clip']:.4f} | {line['validation/aesthetic']:.4f} |" in table
