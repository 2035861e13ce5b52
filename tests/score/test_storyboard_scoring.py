"""storyboard --score writes scores into story.json; --best-of N keeps the argmax of N seeds."""
from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from loraflow.errors import ConfigError
from loraflow.generate.storyboard import StoryboardConfig, run_storyboard
from loraflow.models.prompt_syntax import plain_prompt
from score_helpers import clip_scores_by_hand


@pytest.fixture
def story(tmp_path):
    data = {"title": "t", "style": "anime", "negative_prompt": "(lowres:1.2)",
            "defaults": {"height": 64, "width": 64, "steps": 1, "seed": 5},
            "grid": {"width": 128, "height": 128},
            "scenes": [{"title": "a", "prompt": "a red circle"}, {"title": "b", "prompt": "a (blue:1.3) square"}]}
    path = tmp_path / "story.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_score_writes_per_panel_and_story_scores(story, tmp_path, tiny_clip_dir, head_files, scorer):
    cfg = StoryboardConfig(story=str(story), out=str(tmp_path / "o"), model="tiny:sdxl", score=True,
                           clip=str(tiny_clip_dir), aesthetic=str(head_files["mlp"]))
    index = run_storyboard(cfg, scorer=scorer)
    saved = json.loads((tmp_path / "o" / "story.json").read_text(encoding="utf-8"))
    assert saved == index
    panels = [Image.open(tmp_path / "o" / scene["file"]) for scene in saved["scenes"]]
    # CLIP sees the prompt without weights or LoRA tags, with the story's style prefix
    expected = clip_scores_by_hand(tiny_clip_dir, panels, ["anime,a red circle", "anime,a blue square"])
    assert [scene["scores"]["clip"] for scene in saved["scenes"]] == pytest.approx(expected, abs=1e-3)
    assert all(scene["scores"]["aesthetic"] is not None for scene in saved["scenes"])
    assert saved["scores"]["mean_aesthetic"] == pytest.approx(
        sum(s["scores"]["aesthetic"] for s in saved["scenes"]) / 2)


@pytest.mark.parametrize("metric", ["aesthetic", "combined"])
def test_best_of_keeps_the_highest_scoring_seed(story, tmp_path, tiny_clip_dir, head_files, scorer, metric):
    cfg = StoryboardConfig(story=str(story), out=str(tmp_path / "o"), model="tiny:sdxl", best_of=3,
                           best_of_metric=metric, text_weight=2.0, clip=str(tiny_clip_dir),
                           aesthetic=str(head_files["mlp"]))
    index = run_storyboard(cfg, scorer=scorer)

    def value(c):  # the combined score: weighted mean of CLIP score / 100 (weight 2) and aesthetic / 10 (weight 1)
        return c["aesthetic"] if metric == "aesthetic" else (2 * c["clip"] / 100 + c["aesthetic"] / 10) / 3

    for scene in index["scenes"]:
        seeds = [c["seed"] for c in scene["candidates"]]
        assert seeds == [5, 6, 7]
        assert all(c["combined"] == pytest.approx((2 * c["clip"] / 100 + c["aesthetic"] / 10) / 3)
                   for c in scene["candidates"])
        best = max(scene["candidates"], key=value)
        assert scene["seed"] == best["seed"] and scene["scores"]["aesthetic"] == best["aesthetic"]
        assert f"Seed: {best['seed']}" in scene["infotext"]


def test_scoring_without_weights_is_a_clear_error(story, tmp_path):
    with pytest.raises(ConfigError, match="--aesthetic PATH and/or --clip PATH"):
        run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path), model="tiny:sd15", score=True))
    with pytest.raises(ConfigError, match="--best-of-metric clip needs --clip"):
        run_storyboard(StoryboardConfig(story=str(story), out=str(tmp_path), model="tiny:sd15", best_of=2,
                                        best_of_metric="clip", aesthetic="x"))


def test_plain_prompt_drops_weights_and_lora_tags():
    assert plain_prompt("anime,a (blue:1.3) square <lora:style:0.8>") == "anime,a blue square"
