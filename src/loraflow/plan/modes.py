"""Low-VRAM modes, chosen by the plan: the fastest set that fits a memory budget.

Training modes, cheapest first (a later one costs more time per step):
  text_encoders_on_cpu   captions are encoded once on the CPU into the cache: no loop cost
  optimizer=adamw8bit    bitsandbytes 8-bit AdamW state (CUDA only; planned, not run, on a CPU machine)
  base_fp8               frozen UNet stored in fp8, each layer cast up when it runs (a cast per layer)
  recompute=ff+cross     feed-forward projections and cross-attentions redone in backward (about a
                         sixth more UNet FLOPs)
  gradient_checkpointing recompute activations in backward (about a third more UNet FLOPs)
Generation modes, cheapest first: encoders on the CPU; + VAE tiling; model offload + tiling;
sequential offload + tiling.

Sets are tried cumulatively in that order; the first that fits is the fastest that fits, because
each mode adds cost and the earlier ones save memory for free. Modes already set stay set.
"""
from __future__ import annotations

from loraflow.errors import ConfigError
from loraflow.plan.gpus import GiB, RESERVED_BYTES

TRAIN_STEPS = (
    {"text_encoders_on_cpu": True},
    {"optimizer": "adamw8bit"},
    {"base_fp8": True},
    {"recompute": "ff+cross"},  # moot once checkpointing is on (model_setup.prepare_unet)
    {"gradient_checkpointing": True},
)
GENERATE_STEPS = (
    {"offload": "encoders"},
    {"vae_tiling": True},
    {"offload": "model"},
    {"offload": "sequential"},
)


def flags(changes: dict) -> str:
    """`{"base_fp8": True, "optimizer": "adamw8bit"}` -> `--base-fp8 --optimizer adamw8bit`."""
    out = []
    for key, value in changes.items():
        flag = "--" + key.replace("_", "-")
        out.append(flag if value is True else f"{flag} {value}")
    return " ".join(out)


def candidate_changes(config, steps) -> list[dict]:
    """Cumulative change sets, skipping modes already on or not possible for this config."""
    sets, current = [{}], {}
    for step in steps:
        key, value = next(iter(step.items()))
        if getattr(config, key) == value or not _possible(config, key, value):
            continue
        current = {**current, key: value}
        sets.append(dict(current))
    return sets


def _possible(config, key: str, value) -> bool:
    if key == "text_encoders_on_cpu":
        return not config.train_text_encoder
    if key == "base_fp8":
        return config.mixed_precision != "no"
    if key == "optimizer":  # bitsandbytes' 8-bit AdamW runs on CUDA only
        return getattr(config, "device", "auto") != "cpu"
    return True


def choose(config, budget_bytes: int, planner, steps):
    """(config with the fastest fitting modes, its plan, the changes). One-line ConfigError when
    no set fits, naming the smallest peak found."""
    smallest = None
    for changes in candidate_changes(config, steps):
        candidate = config.model_copy(update=changes)
        plan = planner(candidate)
        if plan.peak_bytes <= budget_bytes:
            return candidate, plan, changes
        if smallest is None or plan.peak_bytes < smallest[0].peak_bytes:
            smallest = (plan, changes)
    plan, changes = smallest
    raise ConfigError(f"plan: no low-VRAM mode set fits {budget_bytes / GiB:.2f} GiB; the smallest peak is "
                      f"{plan.peak_bytes / GiB:.2f} GiB ({flags(changes) or 'no extra flags'}); lower the "
                      f"resolution or batch size")


def spill_message(planned_peak: int, free_bytes: int, fitting: str | None) -> str | None:
    """The one line a CUDA run stops with when its plan exceeds free memory (None: it fits)."""
    if planned_peak <= free_bytes:
        return None
    advice = f"these flags would fit: {fitting}" if fitting else "no low-VRAM mode set fits; lower resolution or batch size"
    return (f"planned peak {planned_peak / GiB:.2f} GiB exceeds the {free_bytes / GiB:.2f} GiB free on the device "
            f"(it would spill into shared memory and run 10-100x slower); {advice}")


def budget_from_vram(vram_gib: float) -> int:
    """--vram is the card's size: the CUDA context and workspaces take RESERVED_BYTES of it."""
    return int(vram_gib * GiB) - RESERVED_BYTES
