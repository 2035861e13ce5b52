"""Weighted prompt encoding, the way AUTOMATIC1111 does it, for CLIP and ChatGLM encoders.

A prompt is parsed into (text, weight) segments (`prompt_syntax.parse_prompt_weights`), tokenized
segment by segment so each token keeps its weight, then:

* CLIP (SD1.5, SDXL): tokens are cut into chunks of 75, each wrapped as BOS + 75 + EOS/pad = 77
  and encoded separately; chunk outputs are concatenated along the sequence (A1111's
  `sd_hijack_clip.py`), so prompts longer than the 77-token window are not truncated.
* ChatGLM (Kolors): one window of up to 256 tokens, left-padded, as `KolorsPipeline` does.

Hidden states are multiplied by the token weights and rescaled to keep the original mean
(A1111: `z * (original_mean / new_mean)`), so weights change emphasis, not overall magnitude.
"""
from __future__ import annotations

from dataclasses import dataclass

from loraflow.models.prompt_syntax import parse_prompt_weights

CLIP_CHUNK = 75  # tokens per CLIP window, without BOS/EOS


@dataclass
class WeightedTokens:
    chunks: list[list[int]]  # token ids per chunk (no special tokens)
    weights: list[list[float]]


def weighted_segments(prompt: str) -> list[tuple[str, float]]:
    return parse_prompt_weights(prompt)


def tokenize_weighted(tokenizer, prompt: str, chunk_size: int | None) -> WeightedTokens:
    """Token ids and per-token weights, split into chunks (`BREAK` forces a new chunk)."""
    chunks: list[list[int]] = [[]]
    weights: list[list[float]] = [[]]
    for text, weight in weighted_segments(prompt):
        if text == "BREAK" and weight == -1:
            chunks.append([])
            weights.append([])
            continue
        if not text:
            continue
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]  # we chunk, no warning
        for token in ids:
            if chunk_size is not None and len(chunks[-1]) >= chunk_size:
                chunks.append([])
                weights.append([])
            chunks[-1].append(token)
            weights[-1].append(weight)
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()
        weights.pop()
    return WeightedTokens(chunks, weights)


def execution_device(module):
    """Where `module` computes: its weights' device, or, under accelerate's offload hooks (weights on the
    meta device until their layer runs), the hooks' execution device (as diffusers' `_execution_device`)."""
    import torch

    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", (hook,)):  # add_hook_to_module(append=True) chains a SequentialHook
            if getattr(h, "execution_device", None) is not None:
                return torch.device(h.execution_device)
    return module.device


def apply_weights(hidden, weights):
    """(B, L, D) * (B, L, 1) with A1111's mean restoration."""
    original_mean = hidden.mean()
    hidden = hidden * weights.unsqueeze(-1)
    new_mean = hidden.mean()
    return hidden * (original_mean / new_mean)


def encode_clip(tokenizer, text_encoder, tokens: WeightedTokens, n_chunks: int, hidden_layer: int | None):
    """Encode CLIP chunks. `hidden_layer=None` -> last_hidden_state (SD1.5); -2 -> penultimate (SDXL).
    Returns (embeds (1, 77*n_chunks, D), pooled of the first chunk (1, P) or None)."""
    import torch

    device = execution_device(text_encoder)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    outputs, pooled = [], None
    for i in range(n_chunks):
        ids = tokens.chunks[i] if i < len(tokens.chunks) else []
        w = tokens.weights[i] if i < len(tokens.weights) else []
        n_pad = CLIP_CHUNK - len(ids)
        input_ids = torch.tensor([[bos] + ids + [eos] + [pad] * n_pad], device=device)
        weight = torch.tensor([[1.0] + w + [1.0] * (n_pad + 1)], device=device)
        out = text_encoder(input_ids, output_hidden_states=hidden_layer is not None)
        hidden = out.last_hidden_state if hidden_layer is None else out.hidden_states[hidden_layer]
        if any(x != 1.0 for x in w):
            hidden = apply_weights(hidden, weight.to(hidden.dtype))
        outputs.append(hidden)
        if i == 0 and hasattr(out, "text_embeds"):
            pooled = out.text_embeds
    return torch.cat(outputs, dim=1), pooled


def clip_chunk_count(tokenizer, prompts: list[str]) -> tuple[list[WeightedTokens], int]:
    tokens = [tokenize_weighted(tokenizer, p, CLIP_CHUNK) for p in prompts]
    return tokens, max(len(t.chunks) for t in tokens)


def encode_chatglm(tokenizer, text_encoder, prompt: str, max_length: int = 256):
    """Kolors' encoding of one weighted prompt -> (embeds (1, max_length, D), pooled (1, D))."""
    import torch

    tokens = tokenize_weighted(tokenizer, prompt, chunk_size=None)
    prefix = tokenizer.get_prefix_tokens()  # [gMASK], sop
    ids = prefix + tokens.chunks[0]
    w = [1.0] * len(prefix) + tokens.weights[0]
    ids, w = ids[:max_length], w[:max_length]
    n_pad = max_length - len(ids)
    device = execution_device(text_encoder)
    pad = tokenizer.pad_token_id or 0
    input_ids = torch.tensor([[pad] * n_pad + ids], device=device)
    attention_mask = torch.tensor([[0] * n_pad + [1] * len(ids)], device=device)
    position_ids = torch.tensor([[0] * n_pad + list(range(len(ids)))], device=device)
    out = text_encoder(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, output_hidden_states=True
    )
    embeds = out.hidden_states[-2].permute(1, 0, 2).clone()  # (L, B, D) -> (B, L, D)
    pooled = out.hidden_states[-1][-1, :, :].clone()  # last position of the final layer, (B, D)
    if any(x != 1.0 for x in w):
        weight = torch.tensor([[1.0] * n_pad + w], device=device, dtype=embeds.dtype)
        embeds = apply_weights(embeds, weight)
    return embeds, pooled
