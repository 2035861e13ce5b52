"""Scores from tiny CLIP models: CLIP and aesthetic scores against a hand computation from the same
weights, determinism, batching, flips, every head layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import ImageOps

from loraflow.errors import ModelLoadError
from loraflow.score import ImageScore, Scorer, reduce_scores
from score_helpers import by_hand_head, clip_scores_by_hand, make_images, mlp_head_state, reference_scores

PROMPTS = ["a cat", "a red ball in the garden", "blue sky"]

def test_scores_equal_a_hand_computation_deterministic_and_batch_equals_items(scorer, tiny_clip_dir):
    images = make_images()
    scores = scorer.score(images, PROMPTS)
    assert all(isinstance(s, ImageScore) for s in scores)
    expected = clip_scores_by_hand(tiny_clip_dir, images, PROMPTS)
    assert min(expected) > 0  # the fixture's seed gives positive cosines: the clamp is not what is compared
    assert [s.clip for s in scores] == pytest.approx(expected, abs=1e-3)
    assert all(np.isfinite(s.aesthetic) for s in scores)
    assert scorer.score(images, PROMPTS) == scores
    one_by_one = [scorer.score([im], [p])[0] for im, p in zip(images, PROMPTS)]
    for a, b in zip(scores, one_by_one):
        assert a.clip == pytest.approx(b.clip, abs=1e-4) and a.aesthetic == pytest.approx(b.aesthetic, abs=1e-5)


def test_clip_score_is_100_times_clamped_cosine(scorer):
    images = make_images()
    img, txt = scorer.clip.image_embeddings(images), scorer.clip.text_embeddings(PROMPTS)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3)) and torch.allclose(txt.norm(dim=-1), torch.ones(3))
    expected = (100 * (img * txt).sum(-1).clamp(min=0)).tolist()
    assert scorer.clip.clip_score(images, PROMPTS) == pytest.approx(expected, abs=1e-4)
    # A negative cosine is clamped to 0 (torchmetrics' CLIPScore).
    from loraflow.score.clip import clip_score_from_embeddings

    assert clip_score_from_embeddings(img[:1], -img[:1]) == [0.0]


def test_missing_prompts_give_no_clip_score(scorer):
    images = make_images()
    scores = scorer.score(images, ["a cat", None, ""])
    assert scores[0].clip is not None and scores[1].clip is None and scores[2].clip is None
    assert all(s.clip is None and s.aesthetic is not None for s in scorer.score(images))


def test_aesthetic_head_file_matches_hand_computed_reference(scorer, tiny_clip_dir, head_files):
    from safetensors.torch import load_file
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(tiny_clip_dir).eval()
    images = make_images(3, size=(48, 40)) + make_images(1, size=(30, 57))  # landscape and portrait
    expected = reference_scores(clip, images, load_file(head_files["mlp"]))
    got = [s.aesthetic for s in scorer.score(images)]
    assert got == pytest.approx(expected, abs=1e-4)


def test_predictor_folder_matches_reference_and_needs_no_clip(predictor_dir):
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    state = load_file(predictor_dir / "model.safetensors")
    config = CLIPVisionConfig.from_json_file(predictor_dir / "config.json")
    vision = CLIPVisionModelWithProjection(config).eval()
    vision.load_state_dict({k: v for k, v in state.items() if not k.startswith("layers.")})
    images = make_images()

    only_aesthetic = Scorer.load(aesthetic=str(predictor_dir), device="cpu")
    scores = only_aesthetic.score(images, PROMPTS)
    assert [s.clip for s in scores] == [None] * 3  # no CLIP folder: no CLIP score
    assert [s.aesthetic for s in scores] == pytest.approx(reference_scores(vision, images, state), abs=1e-4)


def test_every_head_layout(tiny_clip_dir, head_files):
    from safetensors.torch import load_file

    from loraflow.score.clip import load_clip
    from loraflow.score.aesthetic import load_aesthetic

    clip = load_clip(str(tiny_clip_dir), "cpu")
    embeds = clip.image_embeddings(make_images())
    mlp = load_aesthetic(str(head_files["mlp"]), clip).scores_from_embeddings(embeds)
    pth = load_aesthetic(str(head_files["mlp_pth"]), clip, allow_pickle=True).scores_from_embeddings(embeds)
    assert pth == mlp
    relu = load_aesthetic(str(head_files["relu"]), clip)
    assert relu.head.layout == "mlp-relu"
    assert relu.scores_from_embeddings(embeds) == pytest.approx(
        by_hand_head(embeds, load_file(head_files["relu"]), (0, 3, 6, 9, 11), relu=True).tolist(), abs=1e-5)
    linear = load_aesthetic(str(head_files["linear"]), clip)
    state = load_file(head_files["linear"])
    assert linear.head.layout == "linear"
    expected = (embeds @ state["weight"].T + state["bias"])[:, 0]
    assert linear.scores_from_embeddings(embeds) == pytest.approx(expected.tolist(), abs=1e-5)


def test_flips_mirror_the_image_and_reduce(scorer):
    images = make_images()
    flipped = scorer.score(images, PROMPTS, horizontal_flip=True, vertical_flip=True)
    by_hand = scorer.score([ImageOps.flip(ImageOps.mirror(im)) for im in images], PROMPTS)
    assert flipped == by_hand and flipped != scorer.score(images, PROMPTS)
    assert reduce_scores([1.0, None, 3.0], "avg") == 2.0
    assert reduce_scores([1.0, 3.0], "max") == 3.0 and reduce_scores([1.0, 3.0], "min") == 1.0
    assert reduce_scores([None]) is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(clip="/nonexistent/clip"), "--clip"),
    (dict(clip="openai/clip-vit-large-patch14"), "HF_HUB_OFFLINE is set"),
    (dict(aesthetic="HEAD:mlp"), "needs the CLIP ViT-L/14"),
    (dict(aesthetic="HEAD:mlp_pth", clip="CLIP"), "--allow-pickle"),
    (dict(), "nothing to score with"),
])
def test_load_errors_are_one_line(kwargs, message, tiny_clip_dir, head_files, monkeypatch):
    from loraflow.errors import LoraflowError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    resolved = {k: str(tiny_clip_dir) if v == "CLIP" else str(head_files[v[5:]]) if v.startswith("HEAD:") else v
                for k, v in kwargs.items()}
    with pytest.raises(LoraflowError) as e:
        Scorer.load(device="cpu", **resolved)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_wrong_heads_are_refused(tiny_clip_dir, tmp_path):
    from safetensors.torch import save_file

    from loraflow.score.aesthetic import load_aesthetic
    from loraflow.score.clip import load_clip

    clip = load_clip(str(tiny_clip_dir), "cpu")
    save_file(mlp_head_state(768), tmp_path / "vit-l14-head.safetensors")  # the real head's 768-d input
    with pytest.raises(ModelLoadError, match="reads 768-d CLIP image embeddings but .* gives 16-d"):
        load_aesthetic(str(tmp_path / "vit-l14-head.safetensors"), clip)
    save_file({"fc.weight": torch.zeros(1, 16)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelLoadError, match="not an aesthetic head"):
        load_aesthetic(str(tmp_path / "other.safetensors"), clip)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load_aesthetic(str(tmp_path / "empty"), clip)


def test_a_folder_that_is_not_full_clip_is_refused(predictor_dir):
    from loraflow.score.clip import load_clip

    with pytest.raises(ModelLoadError, match="CLIP") as e:
        load_clip(str(predictor_dir), "cpu")
    assert "\n" not in str(e.value)
