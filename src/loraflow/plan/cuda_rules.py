"""What a CUDA run does that the meta device would not do by itself.

* `F.scaled_dot_product_attention` runs as the memory-efficient kernel
  (`aten._scaled_dot_product_efficient_attention`, which has meta kernels and an autograd
  formula): it keeps the output and a (B, H, L) logsumexp for backward, never the L x L matrix
  that the math fallback builds on meta (4096 x 4096 per head at 1024 px).
* Mixed precision: accelerate's `autocast()` is `torch.autocast("cuda", dtype)`, which does not
  act on meta tensors. `cuda_rules(dtype)` applies the casts of torch's CUDA autocast policy
  (aten/src/ATen/autocast_mode.cpp) to the ops that carry the UNet, VAE and encoders: matmuls,
  linear layers, convolutions and attention run in the low precision (casting fp32 LoRA weights
  and inputs down); group/layer norm, softmax and the MSE loss run in fp32. The copies those
  casts make are what autograd saves, so they are counted like on the GPU.
  `torch.is_autocast_enabled("meta")` answers True meanwhile, so code that asks (the training's
  activation-memory savings) takes the path it takes under CUDA autocast.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager

import torch
import torch.nn.functional as F

_LOW = [(F, "linear"), (F, "conv2d"), (F, "conv1d"), (torch, "matmul"), (torch, "bmm"), (torch, "baddbmm"),
        (torch, "mm"), (torch, "addmm")]
_FP32 = [(F, "group_norm"), (F, "layer_norm"), (F, "softmax"), (F, "log_softmax"), (F, "mse_loss")]


def efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                        enable_gqa=False):
    """F.scaled_dot_product_attention as the CUDA memory-efficient kernel computes it."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:  # (B, H_kv, S, D) -> (B, H, S, D)
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device)
        attn_mask = attn_mask.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, attn_mask, grad, dropout_p, is_causal, scale=scale)[0]


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    return value


def _casting(func, dtype):
    @functools.wraps(func)
    def run(*args, **kwargs):
        args = tuple(_cast(a, dtype) for a in args)
        return func(*args, **{k: _cast(v, dtype) for k, v in kwargs.items()})
    return run


def _autocast_on_meta(is_enabled):
    @functools.wraps(is_enabled)
    def run(*args, **kwargs):
        device = args[0] if args else kwargs.get("device_type")
        return device == "meta" or is_enabled(*args, **kwargs)
    return run


@contextmanager
def cuda_rules(autocast_dtype=None):
    """Context: see the module docstring. `autocast_dtype=None`: no mixed precision.

    The functions are replaced on their modules for the duration (restored after), not intercepted
    with a TorchFunctionMode: gradient checkpointing recomputes in backward, on the autograd
    engine's thread, where a mode of this thread is not active and the recompute would differ."""
    patches = {(F, "scaled_dot_product_attention"): efficient_attention}
    if autocast_dtype is not None:
        patches[(F, "scaled_dot_product_attention")] = _casting(efficient_attention, autocast_dtype)
        for module, name in _LOW:
            patches[(module, name)] = _casting(getattr(module, name), autocast_dtype)
        for module, name in _FP32:
            patches[(module, name)] = _casting(getattr(module, name), torch.float32)
        patches[(torch, "is_autocast_enabled")] = _autocast_on_meta(torch.is_autocast_enabled)
    saved = {key: getattr(*key) for key in patches}
    try:
        for (module, name), func in patches.items():
            setattr(module, name, func)
        yield
    finally:
        for (module, name), func in saved.items():
            setattr(module, name, func)
