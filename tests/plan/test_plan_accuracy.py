"""The plan's peak against the peak of the real run: `loraflow.train.train` on a tiny model of every
family, on the CPU, with every tensor it creates counted by the same accountant (real tensors here,
meta tensors in the plan). The plan never runs the trainer: it builds the architecture from the
same configs on the meta device and runs `prepare_unet`, the objective and the optimizer itself."""
from __future__ import annotations

import pytest

FAMILIES = ("sd15", "sdxl", "kolors")


def _dataset(root):
    from PIL import Image

    train = root / "train"
    train.mkdir(parents=True)
    rows = ["file_name,text"]
    for i, colour in enumerate(("red", "green", "blue", "white")):
        Image.new("RGB", (64, 64), colour).save(train / f"{i}.png")
        rows.append(f"{i}.png,a {colour} square")
    (train / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _measured_step_peak(config) -> int:
    """Peak tensor bytes during the second optimizer step of the real run (the first one creates
    the optimizer state; from the second on every step is alike)."""
    from loraflow.plan.accountant import MemoryAccountant
    from loraflow.train.trainer import train

    acct = MemoryAccountant("cpu")
    peaks = {}

    def progress(step, total):
        if step == 1:
            acct.reset_peak()
        elif step == 2:
            peaks["step"] = acct.peak

    with acct:
        train(config, progress=progress)
    return peaks["step"]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("checkpointing", [False, True])
def test_planned_step_peak_within_ten_percent(tmp_path, family, checkpointing):
    from loraflow.train.plan import plan_train
    from loraflow.train.config import TrainConfig

    config = TrainConfig(model=f"tiny:{family}", dataset=str(_dataset(tmp_path / "data")), output=str(tmp_path / "out"),
                         cache_dir=str(tmp_path / "cache"), resolution=64, batch_size=2, lora_rank=4, max_steps=2,
                         gradient_checkpointing=checkpointing, device="cpu", seed=0)
    measured = _measured_step_peak(config)
    planned = next(p for p in plan_train(config).phases if p.name == "training step").peak_bytes
    assert abs(planned - measured) <= 0.10 * measured, (planned, measured)
