"""Activations kept for backward wait in pinned host memory (`offload_activations`, opt-in).

Two forms, one mechanism (saved-tensor hooks that copy a tensor to the host when autograd keeps it and
back when backward asks for it):

* With gradient checkpointing (OneTrainer's CPU_OFFLOADED mode): each checkpointed block's input hidden
  states. torch's non-reentrant checkpoint keeps its inputs as autograd saved tensors
  (`_CheckpointFrame.save_inputs` in torch/utils/checkpoint.py), made *before* it pushes its own
  saved-tensor hooks for the block's inside: hooks set around the call see exactly the block's inputs.
  Only the first argument is moved: the others (time and text embeddings) are shared by every block and
  stay on the device anyway, so host copies of them would save nothing.
* Without checkpointing (torchtune's `OffloadActivations`): every tensor the UNet's forward saves for
  backward from `MIN_BYTES` on that is not a parameter or buffer (those stay on the device anyway).
  A saved tensor's whole storage is copied, once however many ops save it or views of it (a layer
  norm's input is also read by the attention's recomputed norm outputs, loraflow.train.activation_memory;
  GEGLU saves both halves of its projection), and comes back once, held until the last save of it has
  been read; the views are rebuilt with their own strides (a different layout can change the rounding).

The copies are `non_blocking` on the compute stream: the host thread queues them and goes on, but on the
GPU they run in stream order, between the kernels, not beside them (torchtune overlaps them on a second
stream; not done here). So the mode trades step time for memory: the planner (`loraflow plan train`)
notes the bytes each way and their time at 25 GB/s (PCIe 4.0 x16, pinned).

Devices: on CUDA the host is separate memory. On the CPU (and MPS's unified memory) a "host copy" would
be a second copy in the same memory, so tensors there are left alone. The meta device is the planner's
stand-in for CUDA (loraflow.plan.cuda_rules): meta tensors cannot be copied, so an uninitialised host
tensor of the storage's size stands for the copy (its pages are never touched) and the copy back is a new
meta tensor, which the planner's accountant counts as it would the real one.

Planned (Kolors, 1024 px, rank 16, bf16, `loraflow plan train`): with checkpointing the step's peak goes
from 5.54 to 5.35 GiB for 0.34 GiB out and 0.32 back per step (~28 ms at 25 GB/s, 2-3 % of SimpleTuner's
checkpointed H100 step, 1.118 s). Without checkpointing it goes from 8.87 to 5.39 GiB with nothing
recomputed, but 3.6 GiB go out and 3.6 GiB come back: ~0.31 s a step at 25 GB/s, half of SimpleTuner's
whole uncheckpointed H100 step (0.635 s). Checkpointing's recompute is cheaper on such a link (the
planner's H100 compute estimate for the step is 0.038 s), so `--vram` (loraflow.plan.modes) never picks
this form; it is opt-in, for a faster link or a slower GPU.
"""
from __future__ import annotations

import types
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch

OFFLOADED_DEVICES = ("cuda", "meta")
# Saved tensors below this size stay: a copy costs a launch (~10 us) whatever its size, and what small
# tensors keep is small. Every activation of an SDXL / Kolors UNet at 1024 px is larger (the smallest:
# 32 x 32 x 1280 in bf16, 2.5 MiB); time embeddings and LoRA weight casts are smaller.
MIN_BYTES = 1 << 20


@dataclass
class Traffic:
    """Host copies of one or more training steps: bytes each way and how many copies."""
    to_host_bytes: int = 0
    to_device_bytes: int = 0
    copies: int = 0


class _Host:
    """A saved tensor's whole storage in host memory (shared by the views of it that were saved), the
    device it returns to, and its copy back while that lives."""

    def __init__(self, device: torch.device, storage: torch.Tensor):
        self.device, self.storage, self.back = device, storage, None  # storage: (nbytes,) uint8
        # saves not yet unpacked: the copy back is held until the last (a layer norm's input is read by
        # the attention adapters' recomputed norm outputs, then by the norm, within one block's backward)
        self.pending, self.held = 0, None


class _Saved:
    """One saved view of a `_Host` storage: rebuilt with the same dtype, offset, shape and strides, so
    backward sees the layout it would have seen (a different one can change the kernels' rounding)."""

    def __init__(self, host: _Host, tensor: torch.Tensor):
        self.host, self.dtype = host, tensor.dtype
        host.pending += 1
        self.view = (tensor.storage_offset(), tuple(tensor.shape), tensor.stride())


def _bytes_of(storage, device) -> torch.Tensor:
    return torch.empty(0, dtype=torch.uint8, device=device).set_(storage)


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """The bytes of `tensor`'s storage in (pinned, on CUDA) host memory."""
    storage, pinned = tensor.untyped_storage(), tensor.is_cuda  # pinned memory: the copies can be asynchronous
    host = torch.empty(storage.nbytes(), dtype=torch.uint8, device="cpu", pin_memory=pinned)
    if not tensor.is_meta:  # a meta tensor has no data to copy (see the module docstring)
        host.copy_(_bytes_of(storage, tensor.device), non_blocking=pinned)
    return host


class _Offloader:
    """pack / unpack for saved_tensors_hooks: `moves(tensor)` picks what goes to the host; the rest goes
    to the hooks that were set around them (the planner's accountant files what is kept)."""

    def __init__(self, moves, traffic: Traffic | None):
        self.moves, self.traffic = moves, traffic
        self.outer = torch._C._autograd._top_saved_tensors_default_hooks(False) or (lambda t: t, lambda t: t)
        self.copied: dict[tuple, tuple] = {}  # (storage handle, version) -> (storage ref, _Host)

    def pack(self, tensor):
        if not self.moves(tensor):
            return self.outer[0](tensor)
        storage = tensor.untyped_storage()
        key = (storage._cdata, tensor._version)
        seen = self.copied.get(key)
        if seen is not None and seen[0]() is storage:  # the same live storage: one host copy
            return _Saved(seen[1], tensor)
        host = _Host(tensor.device, _to_host(tensor))
        self.copied[key] = (weakref.ref(storage), host)
        if self.traffic is not None:
            self.traffic.to_host_bytes += host.storage.nbytes
            self.traffic.copies += 1
        return _Saved(host, tensor)

    def unpack(self, packed):
        if not isinstance(packed, _Saved):
            return self.outer[1](packed)
        host = packed.host
        back = host.back() if host.back is not None else None
        if back is None:
            if host.device.type == "cpu":  # only when asked for by `devices`: a distinct copy already
                back = host.storage
            else:
                back = host.storage.to(host.device, non_blocking=host.storage.is_pinned())
                if self.traffic is not None:
                    self.traffic.to_device_bytes += back.nbytes
            host.back = weakref.ref(back)
        host.pending -= 1
        host.held = back if host.pending > 0 else None
        offset, shape, stride = packed.view
        return torch.empty(0, dtype=packed.dtype, device=back.device).set_(back.untyped_storage(), offset, shape,
                                                                          stride)

    @contextmanager
    def hooks(self):
        try:
            with torch.autograd.graph.saved_tensors_hooks(self.pack, self.unpack):
                yield
        finally:  # the copies are shared within one forward; afterwards each lives as long as what saved it
            self.copied.clear()


def offloaded_checkpointing(devices: tuple[str, ...] = OFFLOADED_DEVICES, traffic: Traffic | None = None):
    """A `gradient_checkpointing_func` for diffusers' `ModelMixin.enable_gradient_checkpointing`: the
    block runs under `torch.utils.checkpoint.checkpoint` (non-reentrant, as diffusers' default), its
    input hidden states kept in host memory until its recompute. Tensors on devices not in `devices`
    stay where they are (the tests pass ("cpu",) to run the move on this machine)."""
    from torch.utils.checkpoint import checkpoint

    def checkpointed(module, hidden_states, *args):
        if not (isinstance(hidden_states, torch.Tensor) and hidden_states.device.type in devices):
            return checkpoint(module.__call__, hidden_states, *args, use_reentrant=False)
        source = hidden_states.untyped_storage()._cdata  # the others are shared (see the module docstring)
        with _Offloader(lambda t: t.untyped_storage()._cdata == source, traffic).hooks():
            return checkpoint(module.__call__, hidden_states, *args, use_reentrant=False)

    return checkpointed


def offload_saved_activations(model: torch.nn.Module, devices: tuple[str, ...] = OFFLOADED_DEVICES,
                              min_bytes: int | None = None, traffic: Traffic | None = None) -> None:
    """Make `model`'s forward keep what autograd saves from `min_bytes` (default `MIN_BYTES`) on in host
    memory (see the module docstring). Patched on the instance, as activation_memory patches its modules:
    accelerate's autocast wrapper and DDP call it through `model.forward`."""

    def forward(self, *args, **kwargs):
        if not torch.is_grad_enabled():  # validation images, held-out loss: nothing is saved
            return type(self).forward(self, *args, **kwargs)
        least = MIN_BYTES if min_bytes is None else min_bytes
        # parameters move with the model (accelerator.prepare): their storages are read per call
        kept = {t.untyped_storage()._cdata for t in (*self.parameters(), *self.buffers())}

        def moves(tensor):  # the storage is what is copied and what leaves the device
            storage = tensor.untyped_storage()
            return tensor.device.type in devices and storage.nbytes() >= least and storage._cdata not in kept

        with _Offloader(moves, traffic).hooks():
            return type(self).forward(self, *args, **kwargs)

    model.forward = types.MethodType(forward, model)
