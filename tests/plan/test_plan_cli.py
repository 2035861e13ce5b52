"""`loraflow plan` on tiny models: the JSON a script reads, and its one-line errors."""
from __future__ import annotations

import json

from loraflow.cli import main


def test_plan_train_json(capsys):
    assert main(["plan", "train", "--model", "tiny:sdxl", "--resolution", "64", "--gpu", "T4", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"peak_bytes", "by_category", "flops_per_step", "fits", "gpu", "settings"} <= set(plan)
    assert plan["gpu"] == "T4" and plan["fits"] is True and plan["settings"]["resolution"] == 64
    # the peak is the largest phase, and its categories add up to it
    assert plan["peak_bytes"] == max(p["peak_bytes"] for p in plan["phases"])
    assert sum(plan["by_category"].values()) == plan["peak_bytes"]
    assert plan["flops_per_step"] > 0 and plan["step_seconds"] > 0


def test_plan_generate_offload_lowers_the_peak(capsys):
    peaks = {}
    for offload in ("none", "model"):
        assert main(["plan", "generate", "--model", "tiny:kolors", "--height", "64", "--width", "64",
                     "--offload", offload, "--json"]) == 0
        peaks[offload] = json.loads(capsys.readouterr().out)["peak_bytes"]
    assert peaks["model"] < peaks["none"]


def test_unknown_gpu_is_one_line(capsys):
    assert main(["plan", "generate", "--model", "tiny:sd15", "--gpu", "RTX 9090"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: gpu: unknown GPU 'RTX 9090'") and "\n" not in err


def test_plan_that_fits_no_mode_is_one_line(capsys):
    # 0.5 GiB is less than the CUDA context reserve: no mode set can fit
    assert main(["plan", "generate", "--model", "tiny:sd15", "--height", "64", "--width", "64", "--vram", "0.5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: plan: no low-VRAM mode set fits") and "\n" not in err


def test_python_api_plan_equals_the_command(capsys):
    """`loraflow.plan(...)` runs the command's planner: the same JSON for the same options."""
    import loraflow
    from loraflow.errors import ConfigError

    assert main(["plan", "train", "--model", "tiny:sd15", "--resolution", "64", "--gpu", "T4", "--json"]) == 0
    command = json.loads(capsys.readouterr().out)
    plan = loraflow.plan("train", model="tiny:sd15", resolution=64, gpu="T4")
    assert plan.to_dict() == command
    generate = loraflow.plan("generate", {"model": "tiny:sd15", "height": 64, "width": 64}, gpu="T4")
    assert generate.peak_bytes == max(p.peak_bytes for p in generate.phases) and generate.fits
    for bad, key in ((dict(command="fly"), "command"), (dict(gpu="RTX 9090"), "gpu"),
                     (dict(command="train", resolution="big"), "resolution")):
        try:
            loraflow.plan(**bad)
        except ConfigError as e:
            assert key in str(e) and "\n" not in str(e)
        else:
            raise AssertionError(f"{bad} was accepted")


def test_plan_generate_says_what_it_leaves_out():
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.plan import plan_generate

    def notes(**kw):
        return " ".join(plan_generate(GenerateConfig(model="tiny:sdxl", height=64, width=64, **kw)).notes)

    assert "IP-Adapter" not in notes() and "LoRA" not in notes()
    assert "IP-Adapter" in notes(ip_adapter="adapter", reference=["ref.png:0.6"])
    assert "IP-Adapter" not in notes(ip_adapter="adapter", reference=["ref.png:0"])  # not attached at 0
