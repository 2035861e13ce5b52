"""Choosing low-VRAM modes and stopping a run that would spill, with fake plans (no model runs)."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import yaml

from loraflow.errors import ConfigError
from loraflow.train.fit import fit_train_config
from loraflow.plan.gpus import GiB, RESERVED_BYTES, find_gpu
from loraflow.plan.modes import TRAIN_STEPS, choose, spill_message
from loraflow.train.config import TrainConfig


@dataclass
class FakePlan:
    peak_bytes: int
    settings: dict = field(default_factory=lambda: {"stream_text_encoders": False})
    phase: str = "training step"

    @property
    def peak_phase(self):
        return SimpleNamespace(name=self.phase)


def fake_planner(config):
    """10 GiB, less what each mode saves in this made-up model."""
    gib = 10.0 - 4.0 * config.text_encoders_on_cpu - 0.5 * (config.optimizer == "adamw8bit") \
        - 2.0 * config.base_fp8 - 1.5 * config.gradient_checkpointing
    return FakePlan(int(gib * GiB))


def config(**kw):
    return TrainConfig(model="tiny:sdxl", dataset="d", mixed_precision="bf16", **kw)


def test_spill_message_names_peak_free_memory_and_flags():
    assert spill_message(5 * GiB, 6 * GiB, "--base-fp8") is None
    line = spill_message(10 * GiB, 8 * GiB, "--text-encoders-on-cpu --base-fp8")
    assert "planned peak 10.00 GiB" in line and "8.00 GiB free" in line
    assert line.endswith("these flags would fit: --text-encoders-on-cpu --base-fp8") and "\n" not in line
    assert "no low-VRAM mode set fits" in spill_message(10 * GiB, 1 * GiB, None)


def test_cuda_run_over_free_memory_stops_with_the_flags_that_fit():
    # 10 -> 6 (encoders on CPU) -> 5.5 (8-bit AdamW) -> 3.5 (fp8 base): 4 GiB free needs the first three
    with pytest.raises(ConfigError) as e:
        fit_train_config(config(), "cuda", planner=fake_planner, free_bytes=4 * GiB)
    assert "--text-encoders-on-cpu --optimizer adamw8bit --base-fp8" in str(e.value)
    fitted = fit_train_config(config(), "cuda", planner=fake_planner, free_bytes=11 * GiB)
    assert fitted == config(stream_text_encoders=False)  # the plan's choice fills the unset mode, nothing else


def test_vram_picks_the_cheapest_modes_that_fit_and_keeps_those_set():
    said = []
    # budget 7 GiB - reserve: 6 GiB (encoders on CPU) is the first that fits
    chosen = fit_train_config(config(vram=7.0), "cpu", said.append, planner=fake_planner)
    assert chosen.text_encoders_on_cpu and not chosen.base_fp8 and chosen.optimizer == "adamw"
    assert said and "--text-encoders-on-cpu" in said[0]
    # checkpointing already on: 8.5 -> 4.5 fits 6 GiB without touching the rest
    chosen = fit_train_config(config(vram=6.0, gradient_checkpointing=True), "cpu", planner=fake_planner)
    assert chosen.gradient_checkpointing and chosen.text_encoders_on_cpu and not chosen.base_fp8
    assert (6.0 * GiB - RESERVED_BYTES) >= fake_planner(chosen).peak_bytes


def test_a_mode_that_saves_nothing_is_left_off():
    # as when the cache pass streams the encoders: moving them to the CPU lowers no peak
    def planner(c):
        return FakePlan(int((10.0 - 2.0 * c.base_fp8 - 1.5 * c.gradient_checkpointing) * GiB))

    budget = int(7.0 * GiB)  # 10 - 2 (fp8) - 1.5 (ckpt) = 6.5 fits; 8 (fp8 alone) does not
    chosen, plan, changes = choose(config(), budget, planner, TRAIN_STEPS)
    assert changes == {"base_fp8": True, "gradient_checkpointing": True}
    assert not chosen.text_encoders_on_cpu and chosen.optimizer == "adamw"
    assert plan.peak_bytes == int(6.5 * GiB)


def test_a_mode_that_saves_nothing_yet_is_still_tried_once_others_move_the_peak():
    # two phases, as with stream_text_encoders: false: the cache pass (whole text encoders, 4.5 GiB; 3 on the
    # CPU) and the training step (10 GiB). Moving the encoders lowers nothing while the step is the peak;
    # once 8-bit AdamW, fp8 and checkpointing have brought the step to 3.5 GiB the cache pass is the peak,
    # and only all four modes fit 4 GiB (measured so on SDXL, 1024 px, batch 4)
    def planner(c):
        cache_pass = 3.0 + 1.5 * (not c.text_encoders_on_cpu)
        step = 10.0 - 0.5 * (c.optimizer == "adamw8bit") - 2.0 * c.base_fp8 - 4.0 * c.gradient_checkpointing
        return FakePlan(int(max(cache_pass, step) * GiB))

    chosen, plan, changes = choose(config(), int(4.0 * GiB), planner, TRAIN_STEPS)
    assert changes == {"text_encoders_on_cpu": True, "optimizer": "adamw8bit", "base_fp8": True,
                       "gradient_checkpointing": True}
    assert plan.peak_bytes == int(3.5 * GiB)


def test_chosen_modes_with_streaming_set_give_a_config_that_loads_again():
    # stream_text_encoders: true excludes text_encoders_on_cpu (TrainConfig says so): --vram must not add
    # it, or the run's saved config.yaml would not load
    def planner(c):
        return FakePlan(int((10.0 - 1.0 * c.text_encoders_on_cpu - 2.0 * c.base_fp8) * GiB))

    chosen = fit_train_config(config(vram=9.0, stream_text_encoders=True), "cuda", planner=planner, free_bytes=None)
    assert chosen.stream_text_encoders and not chosen.text_encoders_on_cpu and chosen.base_fp8
    assert TrainConfig.from_dict(yaml.safe_load(chosen.to_yaml())) == chosen


def test_spill_advice_may_name_encoders_on_the_cpu_when_the_plan_chose_streaming():
    # streaming left unset, the plan streams; the spill check still weighs text_encoders_on_cpu (which
    # excludes only a streaming the user asked for)
    def planner(c):
        streamed = c.stream_text_encoders is not False and not c.text_encoders_on_cpu
        return FakePlan(int((8.0 - 2.0 * c.text_encoders_on_cpu) * GiB), {"stream_text_encoders": streamed})

    with pytest.raises(ConfigError) as e:
        fit_train_config(config(), "cuda", planner=planner, free_bytes=7 * GiB)
    assert str(e.value).endswith("these flags would fit: --text-encoders-on-cpu")


def test_checkpointing_makes_recompute_moot_and_it_is_not_printed():
    def planner(c):  # recompute saves 1 GiB unless checkpointing (which saves 3) is on
        saved = 3.0 if c.gradient_checkpointing else 1.0 * (c.recompute != "none")
        return FakePlan(int((10.0 - saved) * GiB))

    chosen, plan, changes = choose(config(), int(7.5 * GiB), planner, TRAIN_STEPS)
    assert changes == {"gradient_checkpointing": True} and chosen.recompute == "none"
    assert plan.peak_bytes == 7 * GiB
    chosen, _, changes = choose(config(), int(9.5 * GiB), planner, TRAIN_STEPS)
    assert changes == {"recompute": "ff+cross"} and not chosen.gradient_checkpointing


def test_no_mode_set_fits_is_one_line():
    with pytest.raises(ConfigError) as e:
        fit_train_config(config(vram=2.0), "cpu", planner=fake_planner)
    message = str(e.value)
    assert "no low-VRAM mode set fits" in message and "2.00 GiB" in message and "\n" not in message


def test_gpu_names_and_sizes():
    assert find_gpu("rtx 4090").memory_gib == 24 and find_gpu("GeForce RTX-4090").name == "RTX 4090"
    assert find_gpu("12").tflops is None and find_gpu("12GiB").memory_gib == 12
    with pytest.raises(ConfigError, match="unknown GPU 'RTX 9090'"):
        find_gpu("RTX 9090")


def test_unset_streaming_is_the_plans_choice_said_and_saved_with_the_config():
    said = []

    def streaming_planner(config):
        return FakePlan(int(6 * GiB), {"stream_text_encoders": True}, "training step")

    fitted = fit_train_config(config(), "cuda", said.append, planner=streaming_planner, free_bytes=11 * GiB)
    assert fitted.stream_text_encoders is True and "stream_text_encoders: true" in fitted.to_yaml()
    assert len(said) == 1 and "streamed to the device one layer at a time" in said[0] and "6.00 GiB" in said[0]
    # set by the user, it is kept; on the CPU it is off without planning
    kept = fit_train_config(config(stream_text_encoders=False), "cuda", planner=streaming_planner, free_bytes=11 * GiB)
    assert kept.stream_text_encoders is False
    on_cpu = fit_train_config(config(), "cpu", planner=lambda c: pytest.fail("planned on the CPU"))
    assert on_cpu.stream_text_encoders is False


def test_offload_activations_comes_after_checkpointing_and_not_on_the_cpu():
    def planner(c):  # checkpointing saves 3 GiB, moving its kept inputs to the host 0.25 more
        return FakePlan(int((10.0 - 3.0 * c.gradient_checkpointing - 0.25 * c.offload_activations) * GiB))

    _, plan, changes = choose(config(device="cuda"), int(7.5 * GiB), planner, TRAIN_STEPS)
    assert changes == {"gradient_checkpointing": True}  # plain checkpointing fits: no host copies
    _, plan, changes = choose(config(device="cuda"), int(6.8 * GiB), planner, TRAIN_STEPS)
    assert changes == {"gradient_checkpointing": True, "offload_activations": True}
    assert plan.peak_bytes == int(6.75 * GiB)
    with pytest.raises(ConfigError, match="smallest peak is 7.00 GiB"):  # on the CPU the host is the device
        choose(config(device="cpu"), int(6.8 * GiB), planner, TRAIN_STEPS)
