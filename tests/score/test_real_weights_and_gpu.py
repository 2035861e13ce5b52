"""Checks that need a GPU or real weights; skipped otherwise (never downloads).

Real weights: LORAFLOW_CLIP_DIR = a local openai/clip-vit-large-patch14 folder,
LORAFLOW_AESTHETIC = a local shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE folder
or a `sac+logos+ava1-l14-linearMSE` head converted to .safetensors.
"""
from __future__ import annotations

import os

import pytest
import torch

from loraflow.score import Scorer
from score_helpers import make_images

PROMPTS = ["a cat", "a red ball in the garden", "blue sky"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float16_matches_cpu(tiny_clip_dir, head_files):
    images = make_images()
    cpu = Scorer.load(str(tiny_clip_dir), str(head_files["mlp"]), device="cpu").score(images, PROMPTS)
    gpu = Scorer.load(str(tiny_clip_dir), str(head_files["mlp"]), device="cuda").score(images, PROMPTS)
    for a, b in zip(cpu, gpu):
        assert b.clip == pytest.approx(a.clip, abs=0.5) and b.aesthetic == pytest.approx(a.aesthetic, abs=0.05)


@pytest.mark.weights
@pytest.mark.skipif(not (os.environ.get("LORAFLOW_CLIP_DIR") and os.environ.get("LORAFLOW_AESTHETIC")),
                    reason="set LORAFLOW_CLIP_DIR and LORAFLOW_AESTHETIC to local weights")
def test_real_weights_give_scores_on_the_usual_scales():
    from PIL import Image

    scorer = Scorer.load(os.environ["LORAFLOW_CLIP_DIR"], os.environ["LORAFLOW_AESTHETIC"])
    flat = Image.new("RGB", (512, 512), (128, 128, 128))
    scores = scorer.score(make_images(2, (512, 512)) + [flat], PROMPTS)
    assert all(1.0 <= s.aesthetic <= 10.0 for s in scores)  # LAION's 1-10 rating
    assert all(0.0 <= s.clip <= 50.0 for s in scores)  # 100 x cos; real image-text pairs are ~15-40
