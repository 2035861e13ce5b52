"""Low-VRAM modes, chosen by the plan: the fastest set that fits a memory budget.

Training modes, cheapest first (a later one costs more time per step):
  text_encoders_on_cpu   captions are encoded once on the CPU into the cache: no loop cost
  optimizer=adamw8bit    bitsandbytes 8-bit AdamW state (CUDA only; planned, not run, on a CPU machine)
  base_fp8               frozen UNet stored in fp8, each layer cast up when it runs (a cast per layer)
  recompute=ff+cross     feed-forward projections and cross-attentions redone in backward (about a
                         sixth more UNet FLOPs)
  gradient_checkpointing recompute activations in backward (about a third more UNet FLOPs)
  offload_activations    after checkpointing: its kept block inputs wait in host memory (CUDA only; a
                         device -> host -> device copy of them per step, ~0.3 GB each way for Kolors).
                         Without checkpointing it moves every large activation instead (3.6 GiB each
                         way for Kolors at 1024 px, ~0.3 s at 25 GB/s): slower than checkpointing's
                         recompute on a PCIe link, so the ladder does not offer it alone (opt-in).
Generation modes, cheapest first: encoders on the CPU; + VAE tiling; model offload + tiling;
sequential offload + tiling.

Modes are added cumulatively in that order; the first set that fits is the fastest that fits, because
each mode adds cost and the earlier ones save memory for less. A mode that does not lower the planned
peak is left off. Modes already set stay set.
"""
from __future__ import annotations

from loraflow.errors import ConfigError
from loraflow.plan.gpus import GiB, RESERVED_BYTES

TRAIN_STEPS = (
    {"text_encoders_on_cpu": True},
    {"optimizer": "adamw8bit"},
    {"base_fp8": True},
    {"recompute": "ff+cross"},
    # checkpointing recomputes whole blocks, which makes `recompute` moot (model_setup.prepare_unet): it
    # goes back to the config's own value rather than being printed as a flag that does nothing
    {"gradient_checkpointing": True, "recompute": None},
    {"offload_activations": True, "recompute": None},  # with the checkpointing kept by the step before
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


# generation's offload modes, least device memory last: a set only ever moves further along
OFFLOAD_ORDER = ("none", "encoders", "model", "sequential")


def _possible(config, key: str, value) -> bool:
    if key == "offload":
        return OFFLOAD_ORDER.index(value) > OFFLOAD_ORDER.index(config.offload)
    if key == "text_encoders_on_cpu":  # TrainConfig rejects it beside either (a saved config must load)
        return not config.train_text_encoder and not config.stream_text_encoders
    if key == "base_fp8":
        return config.mixed_precision != "no"
    if key == "optimizer":  # bitsandbytes' 8-bit AdamW runs on CUDA only
        return getattr(config, "device", "auto") != "cpu"
    if key == "offload_activations":  # on the CPU the host memory is the device's: nothing to save
        return getattr(config, "device", "auto") != "cpu"
    return True


def choose(config, budget_bytes: int, planner, steps):
    """(config with the fastest fitting modes, its plan, the changes). Modes are added cumulatively in
    `steps`' order, skipping those already on or not possible for this config, until the plan fits. A mode
    that did not lower the planned peak when it was added is kept on trial, not skipped: it may be what
    fits once later modes have moved the peak to another phase (whole text encoders in the cache pass,
    after checkpointing has lowered the training step). At the end each mode on trial whose removal does
    not raise the peak is left off (e.g. text encoders on the CPU when the cache pass streams them
    anyway): it would cost time for nothing. One-line ConfigError when no set fits, naming the smallest
    peak found."""
    def plan_of(changes: dict):
        return planner(config.model_copy(update=changes))

    plan, changes, on_trial = plan_of({}), {}, []
    best = (plan, changes)
    for step in steps:
        if plan.peak_bytes <= budget_bytes:
            break
        (key, value), *undone = step.items()  # a step's mode, then modes it makes moot (None: as configured)
        if getattr(config, key) == value or not _possible(config, key, value):
            continue
        changes, before = {**changes, key: value}, plan.peak_bytes
        for moot, _ in undone:
            changes.pop(moot, None)
        plan = plan_of(changes)
        if plan.peak_bytes >= before:
            on_trial.append(key)
        if plan.peak_bytes < best[0].peak_bytes:
            best = (plan, changes)
    plan, changes = best
    for key in reversed([k for k in dict.fromkeys(on_trial) if k in changes]):  # dearest first: saves the most time
        fewer = {k: v for k, v in changes.items() if k != key}
        trial = plan_of(fewer)
        if trial.peak_bytes <= plan.peak_bytes:
            plan, changes = trial, fewer
    if plan.peak_bytes <= budget_bytes:
        return config.model_copy(update=changes), plan, changes
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


def stop_if_spilling(config, plan, free_bytes: int | None, planner, steps) -> None:
    """Raise the one-line ConfigError of `spill_message` when `plan` (of `config`) exceeds `free_bytes`,
    naming the cheapest set of `steps` that would fit. `free_bytes` None (not CUDA): nothing to check."""
    if free_bytes is None or plan.peak_bytes <= free_bytes:
        return
    try:
        fitting = flags(choose(config, free_bytes, planner, steps)[2])
    except ConfigError:
        fitting = None
    raise ConfigError(spill_message(plan.peak_bytes, free_bytes, fitting))


def cuda_free_bytes(device: str) -> int | None:
    """Free memory of a CUDA device (torch.cuda.mem_get_info); None for any other device."""
    import torch

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(torch.device(device))[0]


def budget_from_vram(vram_gib: float) -> int:
    """--vram is the card's size: the CUDA context and workspaces take RESERVED_BYTES of it."""
    return int(vram_gib * GiB) - RESERVED_BYTES
