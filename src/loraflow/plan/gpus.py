"""Named GPUs: memory and peak dense tensor-core TFLOPs at 16-bit precision.

Figures are the vendors' datasheet/whitepaper numbers for dense (not 2:4 sparse) math with fp32
accumulation, which is what PyTorch's bf16/fp16 matmuls and convolutions use: GeForce cards run
that at half their fp16-accumulate rate (NVIDIA Ampere/Ada GA102/AD102 whitepapers, appendix
tables). T4 and V100 have no bf16 units: their figure is fp16 (use --mixed-precision fp16 there).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from loraflow.errors import ConfigError

GiB = 1024 ** 3
# CUDA context, cuBLAS/cuDNN workspaces and allocator slack a run cannot use for tensors.
RESERVED_BYTES = int(0.75 * GiB)
# Fraction of peak TFLOPs a diffusion UNet step reaches (convolutions, GroupNorm and elementwise
# work keep it well below matmul peak); bench/plan_vs_cuda.py measures it on a lent GPU.
DEFAULT_EFFICIENCY = 0.40


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    tflops: float | None  # peak dense 16-bit TFLOPs; None for a bare memory size
    bf16: bool = True

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * GiB)

    @property
    def usable_bytes(self) -> int:
        return self.memory_bytes - RESERVED_BYTES

    def step_seconds(self, flops: int, efficiency: float = DEFAULT_EFFICIENCY) -> float | None:
        return None if not self.tflops else flops / (self.tflops * 1e12 * efficiency)


GPUS = {g.name: g for g in (
    Gpu("H200", 141, 989), Gpu("H100", 80, 989), Gpu("H100 PCIe", 80, 756),
    Gpu("A100 80GB", 80, 312), Gpu("A100 40GB", 40, 312), Gpu("L40S", 48, 362), Gpu("RTX A6000", 48, 154.8),
    Gpu("L4", 24, 121), Gpu("A10", 24, 125), Gpu("RTX 4090", 24, 165.2), Gpu("RTX 4080", 16, 97.5),
    Gpu("RTX 4070", 12, 58.3), Gpu("RTX 4060 Ti 16GB", 16, 44.1), Gpu("RTX 3090", 24, 35.6),
    Gpu("RTX 3060 12GB", 12, 12.7), Gpu("T4", 16, 65, bf16=False), Gpu("V100 32GB", 32, 125, bf16=False),
    Gpu("V100 16GB", 16, 125, bf16=False),
)}


def _key(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower().replace("geforce", "").replace("nvidia", ""))


def find_gpu(spec: str) -> Gpu:
    """`--gpu`: a name from GPUS (case, spaces and an 'RTX'/'GeForce' prefix do not matter) or a
    memory size in GiB (`12`, `12GiB`): then no step time is estimated."""
    number = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gib|gb|g)?\s*", spec.lower())
    if number:
        return Gpu(f"{float(number.group(1)):g} GiB", float(number.group(1)), None)
    wanted = _key(spec)
    for name, gpu in GPUS.items():
        if wanted in (_key(name), _key(name).removeprefix("rtx")):
            return gpu
    raise ConfigError(f"gpu: unknown GPU '{spec}'; give a size in GiB (e.g. 12) or one of: {', '.join(GPUS)}")
