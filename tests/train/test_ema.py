"""EMA of the LoRA weights: the update maths by hand, the -ema file, and exact resume."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import base_config
from loraflow.train.ema import LoraEMA


def test_ema_update_matches_a_hand_computation():
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    ema = LoraEMA([p], decay=0.2, warmup_steps=2, every=2)  # warm-up: ceil(2/2) = 1 EMA update
    values = [[3.0, 0.0], [5.0, 1.0], [7.0, 2.0], [11.0, -1.0], [13.0, 4.0], [17.0, 8.0], [19.0, 6.0], [23.0, 2.0]]
    shadow = [1.0, -2.0]
    for step, v in enumerate(values, start=1):
        with torch.no_grad():
            p.copy_(torch.tensor(v, dtype=torch.float64))
        ema.after_step(step)
        if step % 2 == 0:  # EMA update k = step / 2
            t = step // 2 - 1 - 1
            decay = 0.0 if t <= 0 else min(0.2, (1 + t) / (10 + t))
            shadow = [decay * s + (1 - decay) * x for s, x in zip(shadow, v)]
    # by hand: k=1,2 copy (t<=0) -> [11,-1]; k=3: t=1, 2/11 -> (2/11)*[11,-1] + (9/11)*[17,8];
    # k=4: t=2, min(0.2, 3/12) = 0.2 -> 0.2*prev + 0.8*[23,2]
    k3 = [(2 / 11) * 11 + (9 / 11) * 17, (2 / 11) * -1 + (9 / 11) * 8]
    expected = [0.2 * k3[0] + 0.8 * 23, 0.2 * k3[1] + 0.8 * 2]
    assert shadow == pytest.approx(expected, abs=1e-12)
    torch.testing.assert_close(ema.model.shadow_params[0], torch.tensor(expected, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    trained = p.detach().clone()
    with ema.applied():
        torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.equal(p.detach(), trained)  # the trained weights come back afterwards


def _ckpt(output: Path, step: int) -> dict:
    return load_file(output / "checkpoints" / f"step-{step:06d}" / "lora.safetensors")


def test_ema_file_and_resume_is_exact(tmp_path, shapes_dataset):
    from loraflow.train.trainer import train

    config = base_config(tmp_path, shapes_dataset, max_steps=4, save_every=2, ema=True, ema_decay=0.5,
                         learning_rate=1e-2)
    result = train(config)
    assert result.ema_path == Path(config["output"]) / "lora-ema.safetensors"
    ema, plain = load_file(result.ema_path), load_file(result.lora_path)
    assert ema.keys() == plain.keys()
    assert any(not torch.equal(ema[k], plain[k]) for k in ema if k.endswith("lora_up.weight"))
    full = _ckpt(Path(config["output"]), 4)
    assert any(k.startswith("ema.") for k in full)
    resumed = dict(config, output=str(tmp_path / "resumed"),
                   resume=str(Path(config["output"]) / "checkpoints" / "step-000002"))
    train(resumed)
    again = _ckpt(tmp_path / "resumed", 4)
    assert full.keys() == again.keys()
    for k in full:
        assert torch.equal(full[k], again[k]), k
