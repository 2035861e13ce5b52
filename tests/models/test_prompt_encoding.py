"""Weighted prompt encoding: equals diffusers at weight 1, weights change it, long prompts are kept."""
from __future__ import annotations

import pytest
import torch

from loraflow.models.families import get_family
from loraflow.models.tiny import build_tiny_pipeline

LONG = ", ".join(["a cute orange cat in a cozy room"] * 14)  # well over 77 CLIP tokens


@pytest.fixture(scope="module")
def pipes():
    return {f: build_tiny_pipeline(f) for f in ("sd15", "sdxl", "kolors")}


def test_unweighted_prompt_matches_diffusers_encode_prompt(pipes):
    prompt = "a cute orange cat chasing a red ball"
    sd15 = get_family("sd15").encode_prompts(pipes["sd15"], [prompt])[0]
    ref = pipes["sd15"].encode_prompt(prompt, "cpu", 1, False)[0]
    assert torch.equal(sd15.embeds, ref)
    sdxl = get_family("sdxl").encode_prompts(pipes["sdxl"], [prompt])[0]
    ref = pipes["sdxl"].encode_prompt(prompt, device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(sdxl.embeds, ref[0]) and torch.equal(sdxl.pooled, ref[2])
    kolors = get_family("kolors").encode_prompts(pipes["kolors"], ["二次元,一个紫色短发小女孩"])[0]
    ref = pipes["kolors"].encode_prompt("二次元,一个紫色短发小女孩", device="cpu", do_classifier_free_guidance=False)
    assert torch.equal(kolors.embeds, ref[0]) and torch.equal(kolors.pooled, ref[2])
    assert kolors.embeds.shape[1] == 256


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_weights_change_the_embedding(pipes, family):
    enc = get_family(family).encode_prompts
    plain, weighted, explicit_one = enc(pipes[family], ["a cute cat", "a (cute:1.5) cat", "a (cute:1.0) cat"])
    assert not torch.allclose(plain.embeds, weighted.embeds)
    assert torch.allclose(plain.embeds, explicit_one.embeds, atol=1e-6)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_long_clip_prompt_is_chunked_not_truncated(pipes, family):
    tok = pipes[family].tokenizer
    assert len(tok(LONG)["input_ids"]) > 77
    enc = get_family(family).encode_prompts
    long_e, short_e = enc(pipes[family], [LONG, "a cat"])
    n_tokens = len(tok(LONG, add_special_tokens=False)["input_ids"])
    chunks = -(-n_tokens // 75)
    assert chunks >= 2 and long_e.embeds.shape[1] == 77 * chunks == short_e.embeds.shape[1]  # padded to one length
    truncated_tail = enc(pipes[family], [LONG + ", in the rain at night"])[0]
    assert not torch.allclose(long_e.embeds[:, 77:], truncated_tail.embeds[:, 77:])


def test_kolors_accepts_up_to_256_tokens(pipes):
    e = get_family("kolors").encode_prompts(pipes["kolors"], [LONG * 3])[0]
    assert e.embeds.shape == (1, 256, 32)


def test_break_starts_a_new_clip_chunk(pipes):
    e = get_family("sd15").encode_prompts(pipes["sd15"], ["a cat BREAK a dog"])[0]
    assert e.embeds.shape[1] == 154
