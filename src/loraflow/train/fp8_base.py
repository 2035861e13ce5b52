"""Frozen base weights stored in fp8 (e4m3), each layer computed in the training dtype.

diffusers' `enable_layerwise_casting` swaps a layer's parameters between fp8 and the compute dtype
around its forward. That is made for inference: autograd keeps the parameter itself for backward,
so backward reads it in fp8, and gradient checkpointing's recompute sees different dtypes than the
forward saved (a CheckpointError). Here every frozen Linear / Conv2d keeps its fp8 weight for good;
a small autograd function casts it up for the forward, saves the *fp8* tensor, and casts it up again
in backward to propagate the input gradient (the weight needs none). Kept for backward: one byte
per weight instead of two, and never a full-precision copy of all layers at once.
"""
from __future__ import annotations

import types

import torch
import torch.nn.functional as F

STORAGE_DTYPE = torch.float8_e4m3fn


class _Fp8Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype):
        ctx.save_for_backward(weight)
        ctx.dtype = dtype
        return F.linear(x, weight.to(dtype), None if bias is None else bias.to(dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        return grad @ weight.to(grad.dtype), None, None, None


class _Fp8Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, dtype, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conv = (x.shape, stride, padding, dilation, groups)
        return F.conv2d(x, weight.to(dtype), None if bias is None else bias.to(dtype), stride, padding, dilation,
                        groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conv
        grad_input = torch.nn.grad.conv2d_input(shape, weight.to(grad.dtype), grad, stride, padding, dilation, groups)
        return grad_input, None, None, None, None, None, None, None


def _linear_forward(self, x):
    return _Fp8Linear.apply(x, self.weight, self.bias, self.compute_dtype)


def _conv_forward(self, x):
    if self.padding_mode != "zeros":
        raise NotImplementedError("fp8 base: only zero-padded convolutions")
    return _Fp8Conv2d.apply(x, self.weight, self.bias, self.compute_dtype, self.stride, self.padding, self.dilation,
                            self.groups)


def store_base_in_fp8(model: torch.nn.Module, compute_dtype) -> int:
    """Every frozen nn.Linear / nn.Conv2d of `model` (call before LoRA is added) keeps its weight in
    fp8 and computes in `compute_dtype`; returns how many layers. Norms and embeddings are untouched."""
    count = 0
    for module in model.modules():
        if type(module) in (torch.nn.Linear, torch.nn.Conv2d) and not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(STORAGE_DTYPE)
            module.compute_dtype = compute_dtype
            forward = _linear_forward if type(module) is torch.nn.Linear else _conv_forward
            module.forward = types.MethodType(forward, module)
            count += 1
    return count
