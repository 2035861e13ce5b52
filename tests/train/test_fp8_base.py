"""fp8-stored frozen weights: the same outputs and input gradients as the layer computed with its
weight rounded to fp8 and cast back, with and without gradient checkpointing."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from loraflow.train.fp8_base import STORAGE_DTYPE, store_base_in_fp8


def _rounded(weight):
    return weight.to(STORAGE_DTYPE).to(torch.float32)


def test_linear_and_conv_match_fp8_rounded_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(4 * 25, 2))
    model.requires_grad_(False)
    conv_w, conv_b = _rounded(model[0].weight), model[0].bias.clone()
    lin_w, lin_b = _rounded(model[2].weight), model[2].bias.clone()
    assert store_base_in_fp8(model, torch.float32) == 2
    assert model[0].weight.dtype == STORAGE_DTYPE and model[2].weight.dtype == STORAGE_DTYPE

    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    model(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    F.linear(F.conv2d(x_ref, conv_w, conv_b, padding=1).flatten(1), lin_w, lin_b).square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)

    x.grad = None
    checkpointed = torch.utils.checkpoint.checkpoint(model, x, use_reentrant=False)
    checkpointed.square().sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: a bf16 run after an fp32 one (or before) is refused."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def test_training_with_fp8_base_and_checkpointing(tmp_path, shapes_dataset, fresh_accelerate_state):
    import yaml

    from loraflow.train.trainer import train

    result = train(dict(model="tiny:sdxl", dataset=str(shapes_dataset), output=str(tmp_path / "out"), resolution=64,
                        lora_rank=4, batch_size=2, max_steps=2, cache_dir=str(tmp_path / "cache"), device="cpu",
                        mixed_precision="bf16", base_fp8=True, gradient_checkpointing=True,
                        text_encoders_on_cpu=True))
    assert result.lora_path.is_file() and all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    assert result.model.unet.conv_in.weight.dtype == STORAGE_DTYPE
    saved = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert saved["base_fp8"] is True and saved["gradient_checkpointing"] is True and saved["text_encoders_on_cpu"]


def test_plan_files_the_fp8_base_under_weights():
    """Storing the base in fp8 makes new storages during setup; the plan still files them as weights:
    the LoRA's own bytes are those of the same run without fp8, and the UNet's weights are the fp8
    bytes of its linear/conv weights plus everything else in bf16."""
    from loraflow.plan.architecture import resolve_architecture
    from loraflow.train.config import TrainConfig
    from loraflow.train.plan import plan_train

    def by_category(**kw):
        cfg = TrainConfig(model="tiny:sdxl", dataset="unused", resolution=64, mixed_precision="bf16",
                          text_encoders_on_cpu=True, **kw)
        plan = plan_train(cfg)
        return next(p for p in plan.phases if p.name == "training step").by_category

    plain, fp8 = by_category(), by_category(base_fp8=True)
    assert fp8["lora"] == plain["lora"]
    unet = resolve_architecture("tiny:sdxl", None).build("unet", torch.bfloat16)
    frozen = {id(m.weight) for m in unet.modules() if type(m) in (torch.nn.Linear, torch.nn.Conv2d)}
    expected = sum(p.numel() * (1 if id(p) in frozen else 2) for p in unet.parameters())
    assert fp8["weights"] - plain["weights"] == expected - sum(p.numel() * 2 for p in unet.parameters())
