"""data-juicer's model-backed filters on loraflow's scorer: keep/reject by threshold, nothing lost."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from loraflow.data.filter_run import filter_dataset
from loraflow.score import Scorer

TEXTS = ["a red circle", "a blue square", "<__dj__image> a green star <|__dj__eoc|>", "a cat", "a dog", "a tree"]


@pytest.fixture
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(TEXTS):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40 + 8 * i, 48, 3), dtype=np.uint8)).save(path)
        rows.append({"text": text, "image": [str(path)]})
    rows.append({"text": "missing image", "image": [str(tmp_path / "nope.png")]})
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return tmp_path, rows


def run(tmp_path, op: dict):
    recipe = {"dataset_path": str(tmp_path / "in.jsonl"), "export_path": str(tmp_path / "out" / "result.jsonl"),
              "np": 2, "text_keys": "text", "image_key": "image", "process": [op]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return filter_dataset(path, progress=False)


def expected_scores(scorer: Scorer, rows, kind: str):
    ok = [r for r in rows if r["text"] != "missing image"]
    images = [Image.open(r["image"][0]).convert("RGB") for r in ok]
    texts = [r["text"].replace("<__dj__image>", "").replace("<|__dj__eoc|>", "").strip() for r in ok]
    scores = scorer.score(images, texts)
    return [s.clip / 100 if kind == "clip" else s.aesthetic / 10 for s in scores]


def test_text_similarity_filter_keeps_by_threshold(dataset, tiny_clip_dir):
    tmp_path, rows = dataset
    values = expected_scores(Scorer.load(clip=str(tiny_clip_dir), device="cpu"), rows, "clip")
    threshold = float(np.median(values))
    result = run(tmp_path, {"image_text_similarity_filter": {"hf_clip": str(tiny_clip_dir), "min_score": threshold}})
    kept_texts = {r["text"] for r in result.kept}
    assert kept_texts == {r["text"] for r, v in zip(rows, values) if v >= threshold}
    assert len(result.kept) + len(result.rejected) + len(result.errored) == len(rows)
    assert [e["text"] for e in result.errored] == ["missing image"]
    stats = result.rejected[0]["__dj__stats__"]["image_text_similarity"]
    assert len(stats) == 1 and 0.0 <= stats[0] <= 1.0


def test_aesthetics_filter_keeps_by_threshold(dataset, tiny_clip_dir, head_files):
    tmp_path, rows = dataset
    scorer = Scorer.load(clip=str(tiny_clip_dir), aesthetic=str(head_files["mlp"]), device="cpu")
    values = expected_scores(scorer, rows, "aesthetic")
    threshold = float(np.median(values))
    op = {"image_aesthetics_filter": {"hf_scorer_model": str(head_files["mlp"]), "clip_model": str(tiny_clip_dir),
                                      "min_score": threshold, "max_score": 100.0}}
    result = run(tmp_path, op)
    assert {r["text"] for r in result.kept} == {r["text"] for r, v in zip(rows, values) if v >= threshold}
    rejected = result.rejected[0]
    assert rejected["__loraflow__"]["op"] == "image_aesthetics_filter"
    assert rejected["__dj__stats__"]["image_aesthetics_scores"][0] < threshold
