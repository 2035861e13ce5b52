"""Weighted prompt encoding: equals diffusers at weight 1, equals A1111's weighting computed by hand
from the unweighted states (right tokens, mean kept), long prompts are kept."""
from __future__ import annotations

import pytest
import torch

from loraflow.models.families import get_family
from loraflow.models.tiny import build_tiny_pipeline

LONG = ", ".join(["a cute orange cat in a cozy room"] * 14)  # well over 77 CLIP tokens


@pytest.fixture(scope="module")
def pipes():
    pipes = {f: build_tiny_pipeline(f) for f in ("sd15", "sdxl", "kolors")}
    # SD1.5 encodes with CLIP's final LayerNorm output. A released CLIP's LayerNorm has a bias; the
    # tiny one's is zero, so every token's mean is ~0 and A1111's rescale (divide by the new mean)
    # would divide by ~0. A fixed non-zero bias makes the hidden states' mean what it is in practice.
    norm = pipes["sd15"].text_encoder.get_submodule("final_layer_norm")  # transformers 5 layout
    with torch.no_grad():
        norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.5)
    return pipes


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


# ---- A1111 weighting against a hand computation ------------------------------------------------
# The reference: encode the prompt without weights, multiply each token's hidden state by its weight,
# rescale to the unweighted mean (A1111 `sd_hijack_clip.py::process_tokens`: `z * (original_mean /
# new_mean)`, per 77-token chunk and per text encoder). Token positions come from tokenizing each
# segment on its own; the concatenation must equal the plain prompt's tokens, so positions line up.
SEGMENTS = [("a ", 1.0), ("cute", 1.5), (" cat ", 1.0), ("sitting", 0.8)]  # changes that do not cancel out
WEIGHTED = "a (cute:1.5) cat (sitting:0.8)"


def token_weights(tokenizer, segments) -> list[float]:
    """One weight per token of "".join(texts) (no special tokens)."""
    ids, weights = [], []
    for text, weight in segments:
        seg = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += seg
        weights += [weight] * len(seg)
    assert ids == tokenizer("".join(t for t, _ in segments), add_special_tokens=False)["input_ids"]
    return weights


def weigh_by_hand(hidden: torch.Tensor, weights: list[float], offset: int) -> torch.Tensor:
    """hidden (1, L, D); token k sits at position offset + k."""
    w = torch.ones(hidden.shape[1])
    w[offset:offset + len(weights)] = torch.tensor(weights)
    scaled = hidden * w[None, :, None]
    return scaled * (hidden.mean() / scaled.mean())


def clip_by_hand(hidden: torch.Tensor, weights: list[float]) -> torch.Tensor:
    """CLIP layout: chunks of BOS + 75 tokens + EOS/pad, each rescaled to its own mean."""
    chunks = []
    for c in range(hidden.shape[1] // 77):
        part = weights[75 * c:75 * (c + 1)]
        chunk = hidden[:, 77 * c:77 * (c + 1)]
        chunks.append(weigh_by_hand(chunk, part, 1) if any(x != 1.0 for x in part) else chunk)
    return torch.cat(chunks, dim=1)


@pytest.mark.parametrize("family", ["sd15", "sdxl", "kolors"])
def test_weights_scale_the_weighted_tokens_and_keep_the_mean(pipes, family):
    pipe = pipes[family]
    plain = "".join(t for t, _ in SEGMENTS)
    with torch.no_grad():
        base, got = get_family(family).encode_prompts(pipe, [plain, WEIGHTED])
    weights = token_weights(pipe.tokenizer, SEGMENTS)
    if family == "kolors":  # left-padded 256 window: [pad]* + [gMASK] sop + tokens
        expected = weigh_by_hand(base.embeds, weights, base.embeds.shape[1] - len(weights))
    elif family == "sdxl":  # each encoder's states weighted and rescaled on their own, then concatenated
        d1 = pipe.text_encoder.config.hidden_size
        expected = torch.cat([clip_by_hand(base.embeds[..., :d1], weights),
                              clip_by_hand(base.embeds[..., d1:], token_weights(pipe.tokenizer_2, SEGMENTS))], dim=-1)
    else:
        expected = clip_by_hand(base.embeds, weights)
    assert torch.allclose(got.embeds, expected, atol=1e-5), (got.embeds - expected).abs().max()
    assert got.embeds.mean() == pytest.approx(base.embeds.mean().item(), rel=1e-4)
    if base.pooled is not None:  # A1111 leaves the pooled embedding unweighted
        assert torch.allclose(got.pooled, base.pooled)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_weight_in_the_second_clip_chunk_lands_on_its_token(pipes, family):
    """A weighted word past the first 75 tokens: weighted in chunk 2 only, at its own position."""
    pipe = pipes[family]
    segments = [(LONG + ", a ", 1.0), ("red", 1.6), (" ball", 1.0)]
    weighted = LONG + ", a (red:1.6) ball"
    with torch.no_grad():
        base, got = get_family(family).encode_prompts(pipe, ["".join(t for t, _ in segments), weighted])
    d1 = pipe.text_encoder.config.hidden_size if family == "sdxl" else base.embeds.shape[-1]
    expected = clip_by_hand(base.embeds[..., :d1], token_weights(pipe.tokenizer, segments))
    assert base.embeds.shape[1] >= 154
    assert torch.allclose(got.embeds[..., :d1], expected, atol=1e-5), (got.embeds[..., :d1] - expected).abs().max()
    assert torch.equal(got.embeds[:, :77], base.embeds[:, :77])  # chunk 1 holds no weight: untouched
