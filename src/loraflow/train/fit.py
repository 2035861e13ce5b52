"""Before a training run loads anything: choose low-VRAM modes for `--vram`, decide whether the cache pass
streams the text encoders, and on CUDA stop a run whose plan exceeds the free device memory (it would
spill into shared memory and crawl) with one line naming the planned peak, the free memory and the flags
that would fit. The chosen modes are in the config the run saves (OUTPUT/config.yaml)."""
from __future__ import annotations

from typing import Callable

from loraflow.plan.gpus import GiB
from loraflow.plan.modes import TRAIN_STEPS, budget_from_vram, choose, flags, stop_if_spilling


def fit_train_config(config, device: str, say: Callable[[str], None] = print, planner=None, free_bytes=None):
    """`config`, with modes chosen for `config.vram` when set, and `stream_text_encoders` decided when unset
    (the plan's choice on an accelerator; off on the CPU, where the encoders are anyway). `free_bytes` is
    the device's free memory (CUDA: torch.cuda.mem_get_info; None elsewhere: no spill check). `planner` is
    plan_train (tests pass a fake). Raises ConfigError with the one line when the run would not fit."""
    if config.stream_text_encoders is None and str(device).split(":")[0] == "cpu":
        config = config.model_copy(update={"stream_text_encoders": False})
    if config.vram is None and free_bytes is None and config.stream_text_encoders is not None:
        return config
    if planner is None:
        from loraflow.train.plan import plan_train as planner
    if config.vram is not None:
        config, plan, changes = choose(config, budget_from_vram(config.vram), planner, TRAIN_STEPS)
        say(f"plan: --vram {config.vram:g}: low-VRAM modes {flags(changes) or 'none needed'}; "
            f"planned peak {plan.peak_bytes / GiB:.2f} GiB")
    else:
        plan = planner(config)
    # the spill check weighs the modes with streaming still the plan's to choose: a streaming set here
    # would rule out text_encoders_on_cpu, which only a streaming the user asked for excludes
    stop_if_spilling(config, plan, free_bytes, planner, TRAIN_STEPS)
    if config.stream_text_encoders is None:  # the plan measured the cache pass both ways and chose
        config = config.model_copy(update={"stream_text_encoders": plan.settings["stream_text_encoders"]})
        if config.stream_text_encoders:
            say(f"plan: text encoders streamed to the device one layer at a time in the cache pass (whole, they "
                f"would make it the run's peak); planned peak {plan.peak_bytes / GiB:.2f} GiB "
                f"({plan.peak_phase.name})")
    return config
