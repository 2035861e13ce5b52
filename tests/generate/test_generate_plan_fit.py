"""No silent spill for generation: on CUDA, `generate` and `storyboard` stop before loading the model when
their plan exceeds the free device memory, with one line naming the planned peak, the free memory and
the flags that would fit. The CUDA figure (torch.cuda.mem_get_info) is replaced by made-up numbers."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

import loraflow.generate.plan as generate_plan
from loraflow.cli import main
from loraflow.errors import ConfigError
from loraflow.generate.options import GenerateConfig
from loraflow.generate.plan import plan_generate, stop_if_over_free_memory
from loraflow.plan.gpus import GiB


@dataclass
class FakePlan:
    peak_bytes: int


def fake_planner(config):
    """12 GiB, less what each mode saves in this made-up model."""
    saved = {"none": 0.0, "encoders": 3.0, "model": 6.0, "sequential": 9.0}[config.offload]
    return FakePlan(int((12.0 - saved - 1.0 * config.vae_tiling) * GiB))


def test_over_free_memory_names_peak_free_and_the_cheapest_flags_that_fit():
    config = GenerateConfig(model="tiny:sdxl", prompt="a cat")
    stop_if_over_free_memory(config, "cuda", free_bytes=13 * GiB, planner=fake_planner)  # fits: no error
    # 12 -> 9 (encoders) -> 8 (+ tiling) -> 5 (model offload + tiling): 6 GiB free needs the third set
    with pytest.raises(ConfigError) as e:
        stop_if_over_free_memory(config, "cuda", free_bytes=6 * GiB, planner=fake_planner)
    line = str(e.value)
    assert "planned peak 12.00 GiB" in line and "6.00 GiB free" in line and "\n" not in line
    assert line.endswith("these flags would fit: --offload model --vae-tiling")


def test_modes_already_set_are_not_undone():
    # model offload is on already: the first step that saves anything is sequential offload, never "encoders"
    config = GenerateConfig(model="tiny:sdxl", prompt="a cat", offload="model")
    with pytest.raises(ConfigError) as e:
        stop_if_over_free_memory(config, "cuda", free_bytes=int(5.5 * GiB), planner=fake_planner)
    assert str(e.value).endswith("these flags would fit: --vae-tiling")
    with pytest.raises(ConfigError) as e:
        stop_if_over_free_memory(config, "cuda", free_bytes=int(2.5 * GiB), planner=fake_planner)
    assert str(e.value).endswith("these flags would fit: --vae-tiling --offload sequential")


def test_not_cuda_is_not_checked():
    config = GenerateConfig(model="tiny:sdxl", prompt="a cat")
    stop_if_over_free_memory(config, "cpu", planner=lambda c: pytest.fail("planned on the CPU"))


def test_generate_command_stops_before_loading_naming_the_first_mode_that_fits(tmp_path, monkeypatch, capsys):
    config = GenerateConfig(model="tiny:sd15", prompt="a cat", height=64, width=64, dtype="float32")
    everything = plan_generate(config).peak_bytes
    free = plan_generate(config.model_copy(update={"offload": "encoders"})).peak_bytes  # just enough for it
    assert free < everything
    monkeypatch.setattr(generate_plan, "cuda_free_bytes", lambda device: free)
    monkeypatch.setattr("loraflow.models.loading.resolve_device", lambda device: "cuda:0")
    monkeypatch.setattr("loraflow.generate.session.GenerationSession.from_options",
                        classmethod(lambda cls, options: pytest.fail("the model was loaded")))
    out = tmp_path / "out"
    assert main(["generate", "--model", "tiny:sd15", "--height", "64", "--width", "64", "--dtype", "float32",
                 "--prompt", "a cat", "--out", str(out), "--device", "cuda"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("error: planned peak") and "\n" not in line  # tiny sizes: the GiB figures read 0.00
    assert line.endswith("these flags would fit: --offload encoders")
    assert not out.exists()


def test_storyboard_stops_before_the_first_image(tmp_path, monkeypatch):
    from loraflow.generate.storyboard import StoryboardConfig, run_storyboard
    from tests.generate.test_storyboard import write_story

    monkeypatch.setattr(generate_plan, "cuda_free_bytes", lambda device: 1024)  # 1 KiB: nothing fits
    monkeypatch.setattr("loraflow.models.loading.resolve_device", lambda device: "cuda:0")
    out = tmp_path / "out"
    cfg = StoryboardConfig(story=str(write_story(tmp_path, n=2)), out=str(out), model="tiny:sd15", device="cuda")
    with pytest.raises(ConfigError, match=r"exceeds the 0.00 GiB free .*no low-VRAM mode set fits"):
        run_storyboard(cfg)
    assert not list(out.glob("scene-*.png"))
