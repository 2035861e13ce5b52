"""What a plan says: peak device memory by category and phase, FLOPs, fit and step time on a GPU."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from loraflow.plan.accountant import CATEGORIES
from loraflow.plan.gpus import DEFAULT_EFFICIENCY, GiB, Gpu


@dataclass
class Phase:
    name: str  # "cache pass", "training step", "validation", "text encoding", "denoising step", "VAE decode"
    peak_bytes: int
    by_category: dict[str, int]


@dataclass
class Plan:
    command: str  # train | generate | storyboard
    model: str  # where the architecture came from
    settings: dict  # the options that decide memory, and the low-VRAM modes
    phases: list[Phase]
    flops_per_step: int  # one optimizer step (train) or one denoising step + decode (generate)
    gpu: Gpu | None = None
    efficiency: float = DEFAULT_EFFICIENCY
    notes: list[str] = field(default_factory=list)
    flops_per_image: int | None = None  # generate: text encoding + every denoising step + decode

    @property
    def peak_phase(self) -> Phase:
        return max(self.phases, key=lambda p: p.peak_bytes)

    @property
    def peak_bytes(self) -> int:
        return self.peak_phase.peak_bytes

    @property
    def fits(self) -> bool | None:
        return None if self.gpu is None else self.peak_bytes <= self.gpu.usable_bytes

    def step_seconds(self) -> float | None:
        return None if self.gpu is None else self.gpu.step_seconds(self.flops_per_step, self.efficiency)

    def to_dict(self) -> dict:
        return {
            "command": self.command, "model": self.model,
            "peak_bytes": self.peak_bytes, "peak_gib": round(self.peak_bytes / GiB, 3),
            "peak_phase": self.peak_phase.name,
            "by_category": {c: self.peak_phase.by_category.get(c, 0) for c in CATEGORIES},
            "phases": [asdict(p) for p in self.phases],
            "flops_per_step": self.flops_per_step, "flops_per_image": self.flops_per_image,
            "fits": self.fits, "gpu": self.gpu.name if self.gpu else None,
            "gpu_usable_bytes": self.gpu.usable_bytes if self.gpu else None,
            "step_seconds": self.step_seconds(), "efficiency": self.efficiency,
            "settings": self.settings, "notes": self.notes,
        }


def format_plan(plan: Plan) -> str:
    """The human-readable report."""
    gib = lambda n: f"{n / GiB:7.2f} GiB"  # noqa: E731
    lines = [f"loraflow plan {plan.command}: {plan.model}",
             "settings: " + ", ".join(f"{k}={v}" for k, v in plan.settings.items())]
    for phase in plan.phases:
        mark = "  <- peak" if phase is plan.peak_phase else ""
        lines.append(f"  {phase.name:<16}{gib(phase.peak_bytes)}{mark}")
    lines.append("at the peak:")
    for name in CATEGORIES:
        lines.append(f"  {name:<16}{gib(plan.peak_phase.by_category.get(name, 0))}")
    lines.append(f"FLOPs per step: {plan.flops_per_step / 1e12:.2f} TFLOP")
    if plan.gpu is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(f"{plan.gpu.name}: {verdict} ({gib(plan.gpu.usable_bytes).strip()} usable of {plan.gpu.memory_gib:g} GiB)")
        seconds = plan.step_seconds()
        if seconds is not None:
            lines.append(f"estimated {seconds:.3f} s/step at {plan.efficiency:.0%} of {plan.gpu.tflops:g} TFLOPs")
            if plan.flops_per_image:
                image = plan.gpu.step_seconds(plan.flops_per_image, plan.efficiency)
                lines.append(f"estimated {image:.1f} s/image ({plan.flops_per_image / 1e12:.0f} TFLOP)")
    lines.extend(f"note: {n}" for n in plan.notes)
    return "\n".join(lines)
