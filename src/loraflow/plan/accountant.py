"""Count device memory the way the CUDA caching allocator sees tensors, without a GPU.

`MemoryAccountant` is a `TorchDispatchMode`: every tensor an op returns has its storage recorded
once (bytes = `nbytes`), and a weakref finalizer on the storage takes the bytes off when the last
tensor using it dies. The running total and its peak are therefore the live tensor bytes, on the
meta device (planning) or on real tensors (the accuracy test measures a CPU run the same way).
Every storage carries a category (weights, LoRA parameters, gradients, ...); the split at the peak
is kept. The CUDA allocator rounds blocks up to 512 B and keeps a cache; neither is counted, which
is why bench/plan_vs_cuda.py compares against `torch.cuda.max_memory_allocated`, not reserved.
"""
from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry as _FLOP_FORMULAS

CATEGORIES = ("weights", "lora", "gradients", "optimizer", "activations", "temporaries")


class MemoryAccountant(TorchDispatchMode):
    """Live tensor bytes on `device_type`, their peak, and the split by category at the peak."""

    def __init__(self, device_type: str = "meta"):
        super().__init__()
        self.device_type = device_type
        self.default = "temporaries"  # category of new storages (see `category()`)
        self._live: dict[int, list] = {}  # storage cdata -> [bytes, category]
        self.by_category = dict.fromkeys(CATEGORIES, 0)
        self.current = 0
        self.peak = 0
        self.peak_by_category = dict(self.by_category)
        self.count_flops = False  # see `counting_flops()`
        self.flops = 0

    # ---- recording ------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.count_flops:
            formula = _FLOP_FORMULAS.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == self.device_type:
                self._see(t.untyped_storage())
        return out

    def _see(self, storage) -> None:
        key = storage._cdata
        if key in self._live:
            return
        size = storage.nbytes()
        self._live[key] = [size, self.default]
        weakref.finalize(storage, self._free, key)
        self.current += size
        self.by_category[self.default] += size
        if self.current > self.peak:
            self.peak = self.current
            self.peak_by_category = dict(self.by_category)

    def _free(self, key: int) -> None:
        entry = self._live.pop(key, None)
        if entry is not None:
            self.current -= entry[0]
            self.by_category[entry[1]] -= entry[0]

    # ---- categories -----------------------------------------------------------------------
    @contextmanager
    def category(self, name: str):
        """Storages created inside the block get category `name`."""
        before, self.default = self.default, name
        try:
            yield
        finally:
            self.default = before

    def tag(self, tensors, name: str) -> None:
        """Re-file the storages of `tensors` (already counted) under `name`."""
        for t in tensors:
            if t is None:
                continue
            entry = self._live.get(t.untyped_storage()._cdata)
            if entry is not None and entry[1] != name:
                self.by_category[entry[1]] -= entry[0]
                self.by_category[name] += entry[0]
                entry[1] = name

    @contextmanager
    def offloaded(self, tensors):
        """Inside the block the storages of `tensors` are in host memory, not on the device (accelerate's
        CPU offload holds a module's weights there): they are off the running total until the block ends."""
        taken = []
        for t in tensors:
            key = t.untyped_storage()._cdata
            entry = self._live.get(key)
            if entry is not None and entry[0]:  # a storage freed meanwhile then takes 0 bytes off, not its size
                taken.append((key, entry[0]))
                self.current -= entry[0]
                self.by_category[entry[1]] -= entry[0]
                entry[0] = 0
        try:
            yield
        finally:
            for key, size in taken:
                entry = self._live.get(key)
                if entry is not None:
                    entry[0] = size
                    self.current += size
                    self.by_category[entry[1]] += size

    @contextmanager
    def saved_for_backward(self):
        """Storages autograd keeps for backward count as activations while they are kept."""
        def pack(t):
            entry = self._live.get(t.untyped_storage()._cdata)
            if entry is not None and entry[1] == "temporaries":
                self.tag([t], "activations")
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    @contextmanager
    def counting_flops(self):
        """Add the FLOPs of the ops run inside the block to `flops`, with torch's formulas
        (torch.utils.flop_counter: matmuls, convolutions, attention kernels; elementwise ops are
        free). FlopCounterMode itself is not used: its module tracking wraps every module's
        outputs, which keeps tensors alive longer than the run would and so changes the peak."""
        before, self.count_flops = self.count_flops, True
        try:
            yield
        finally:
            self.count_flops = before

    def reset_peak(self) -> None:
        self.peak = self.current
        self.peak_by_category = dict(self.by_category)

    def resident(self, *categories: str) -> int:
        return sum(self.by_category[c] for c in categories)
