"""data-juicer's model-backed filters on loraflow's scorer: keep/reject by threshold, nothing lost."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from loraflow.data.filter_run import filter_dataset
from score_helpers import clip_scores_by_hand, reference_scores

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


def expected_scores(clip_dir, rows, kind: str, head_file=None) -> list[float]:
    """Per readable row, what data-juicer's stat should be, computed by hand (not by loraflow's Scorer):
    the CLIP cosine (CLIPScore / 100) or the aesthetic score / 10."""
    ok = [r for r in rows if r["text"] != "missing image"]
    images = [Image.open(r["image"][0]).convert("RGB") for r in ok]
    if kind == "clip":
        texts = [r["text"].replace("<__dj__image>", "").replace("<|__dj__eoc|>", "").strip() for r in ok]
        return [s / 100 for s in clip_scores_by_hand(clip_dir, images, texts)]
    from safetensors.torch import load_file
    from transformers import CLIPModel

    vision = CLIPModel.from_pretrained(clip_dir).eval()
    return [s / 10 for s in reference_scores(vision, images, load_file(head_file))]


def kept_and_rejected(rows, values, threshold) -> tuple[set, set]:
    ok = [r for r in rows if r["text"] != "missing image"]
    assert min(abs(v - threshold) for v in values if v != threshold) > 1e-4  # no row sits on the edge
    return ({r["text"] for r, v in zip(ok, values) if v >= threshold},
            {r["text"] for r, v in zip(ok, values) if v < threshold})


def test_text_similarity_filter_keeps_by_threshold(dataset, tiny_clip_dir):
    tmp_path, rows = dataset
    values = expected_scores(tiny_clip_dir, rows, "clip")
    threshold = float(np.median(values))
    result = run(tmp_path, {"image_text_similarity_filter": {"hf_clip": str(tiny_clip_dir), "min_score": threshold}})
    kept, rejected = kept_and_rejected(rows, values, threshold)
    assert {r["text"] for r in result.kept} == kept and {r["text"] for r in result.rejected} == rejected
    assert (len(result.kept), len(result.rejected), len(result.errored)) == (len(kept), len(rejected), 1)
    assert [e["text"] for e in result.errored] == ["missing image"]
    first = result.rejected[0]
    [stat] = first["__dj__stats__"]["image_text_similarity"]
    assert stat == pytest.approx(values[[r["text"] for r in rows].index(first["text"])], abs=1e-5)


def test_aesthetics_filter_keeps_by_threshold(dataset, tiny_clip_dir, head_files):
    tmp_path, rows = dataset
    values = expected_scores(tiny_clip_dir, rows, "aesthetic", head_files["mlp"])
    threshold = float(np.median(values))
    op = {"image_aesthetics_filter": {"hf_scorer_model": str(head_files["mlp"]), "clip_model": str(tiny_clip_dir),
                                      "min_score": threshold, "max_score": 100.0}}
    result = run(tmp_path, op)
    kept, rejected = kept_and_rejected(rows, values, threshold)
    assert {r["text"] for r in result.kept} == kept and {r["text"] for r in result.rejected} == rejected
    first = result.rejected[0]
    assert first["__loraflow__"]["op"] == "image_aesthetics_filter"
    [stat] = first["__dj__stats__"]["image_aesthetics_scores"]
    assert stat == pytest.approx(values[[r["text"] for r in rows].index(first["text"])], abs=1e-5)
