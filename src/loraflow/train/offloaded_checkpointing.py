"""Gradient checkpointing whose kept block inputs wait in host memory (OneTrainer's CPU_OFFLOADED mode).

A checkpointed block keeps only its inputs for backward and recomputes the rest. What the ~70 blocks
(transformer blocks and ResNets) of an SDXL / Kolors UNet keep that way at 1024 px is still about
0.2 GiB at the training step's peak, which comes in backward. Here each block's input hidden states are
copied to pinned host memory as the block runs forward and copied back when backward recomputes that
block (non_blocking: the host thread queues the copies and goes on; on the GPU they run in stream order).

How: torch's non-reentrant checkpoint keeps its inputs as autograd saved tensors
(`_CheckpointFrame.save_inputs` in torch/utils/checkpoint.py), made *before* it pushes its own
saved-tensor hooks for the block's inside. Saved-tensor hooks set around the call therefore see exactly
the block's inputs; what the block's ops save is the checkpoint's business (dropped, recomputed).
Only the first argument, the hidden states, is moved: the other inputs (time and text embeddings) are
shared by every block and stay on the device anyway, so host copies of them would save nothing.

Devices: on CUDA the host is separate memory. On the CPU (and MPS's unified memory) a "host copy" would
be a second copy in the same memory, so tensors there are left alone: the mode is plain checkpointing.
The meta device is the planner's stand-in for CUDA (loraflow.plan.cuda_rules): meta tensors cannot be
copied, so an uninitialised host tensor of the same shape stands for the copy (its pages are never
touched) and the copy back is a new meta tensor, which the planner's accountant counts as it would the
real one.

Not the default (planned, Kolors / SDXL, 1024 px, rank 16, bf16): the step's peak goes from 5.54 to
5.35 GiB (-0.19 GiB, 3.4 %), but 0.34 GiB go each way per step in 86 copies; at ~25 GB/s (PCIe 4.0
x16, pinned) that is ~30 ms a step in stream order, 2-3 % of a checkpointed step (SimpleTuner's Kolors
figure: 1.118 s on an H100), more on PCIe 3.0. `--vram` (loraflow.plan.modes) adds it after plain
checkpointing, when those 0.19 GiB are what is missing.
"""
from __future__ import annotations

import torch

OFFLOADED_DEVICES = ("cuda", "meta")


class _Host:
    """A block input in host memory and the device it returns to."""

    def __init__(self, device: torch.device, tensor: torch.Tensor):
        self.device, self.tensor = device, tensor


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    pinned = tensor.is_cuda  # pinned memory: the copies can be asynchronous
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=pinned)
    if not tensor.is_meta:  # a meta tensor has no data to copy (see the module docstring)
        host.copy_(tensor, non_blocking=pinned)
    return host


def offloaded_checkpointing(devices: tuple[str, ...] = OFFLOADED_DEVICES):
    """A `gradient_checkpointing_func` for diffusers' `ModelMixin.enable_gradient_checkpointing`: the
    block runs under `torch.utils.checkpoint.checkpoint` (non-reentrant, as diffusers' default), its
    input hidden states kept in host memory until its recompute. Tensors on devices not in `devices`
    stay where they are (the tests pass ("cpu",) to run the move on this machine)."""
    from torch.utils.checkpoint import checkpoint

    def checkpointed(module, hidden_states, *args):
        if not (isinstance(hidden_states, torch.Tensor) and hidden_states.device.type in devices):
            return checkpoint(module.__call__, hidden_states, *args, use_reentrant=False)
        source = hidden_states.untyped_storage()._cdata
        # hooks already set around the call (the planner's accountant files what is kept) still see the rest
        outer = torch._C._autograd._top_saved_tensors_default_hooks(False) or (lambda t: t, lambda t: t)

        def pack(tensor):
            if tensor.untyped_storage()._cdata != source:  # a shared input (see the module docstring)
                return outer[0](tensor)
            return _Host(tensor.device, _to_host(tensor))

        def unpack(packed):
            if not isinstance(packed, _Host):
                return outer[1](packed)
            device, host = packed.device, packed.tensor
            if device.type == "cpu":  # only when asked for by `devices`: a distinct copy already
                return host
            return host.to(device, non_blocking=host.is_pinned())

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            return checkpoint(module.__call__, hidden_states, *args, use_reentrant=False)

    return checkpointed
