"""Offloaded gradient checkpointing: the same gradients as plain checkpointing, the block inputs really
leave the device (a distinct host copy), and the device bytes it saves are what an independent count of
the checkpointed blocks' inputs says."""
from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import loraflow.train.offloaded_checkpointing as offload


def _unet(seed: int = 0):
    from peft import LoraConfig

    from loraflow.models.tiny import build_tiny_components

    unet = build_tiny_components("sdxl", seed=seed)["unet"]
    unet.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"]))
    for name, param in unet.named_parameters():
        if "lora_B" in name:  # B starts at zero: make the adapters do something
            torch.nn.init.normal_(param, std=0.1)
    return unet.train()


def _inputs(device="cpu"):
    gen = torch.Generator().manual_seed(1)
    inputs = dict(sample=torch.randn(2, 4, 8, 8, generator=gen), timestep=torch.tensor([10, 700]),
                  encoder_hidden_states=torch.randn(2, 77, 64, generator=gen),
                  added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=gen),
                                     "time_ids": torch.randn(2, 6, generator=gen)})
    move = lambda v: {k: move(x) for k, x in v.items()} if isinstance(v, dict) else v.to(device)
    return move(inputs)


def test_gradients_bit_equal_to_plain_checkpointing(monkeypatch):
    moved = []
    to_host = offload._to_host

    def recording(tensor):
        host = to_host(tensor)
        moved.append((tensor.untyped_storage().data_ptr(), host.untyped_storage().data_ptr(),
                      torch.equal(host, tensor)))
        return host

    monkeypatch.setattr(offload, "_to_host", recording)
    plain, moving, calls = _unet(), _unet(), []

    def counting(module, *args):  # plain checkpointing, counting the blocks diffusers checkpoints
        calls.append(module)
        return checkpoint(module.__call__, *args, use_reentrant=False)

    plain.enable_gradient_checkpointing(counting)
    moving.enable_gradient_checkpointing(offload.offloaded_checkpointing(devices=("cpu",)))  # the mechanics on CPU
    grads = []
    for unet in (plain, moving):
        unet(**_inputs()).sample.pow(2).mean().backward()
        grads.append({n: p.grad for n, p in unet.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name
    # one host copy per checkpointed block, each a distinct storage holding the same values
    assert len(moved) == len(calls) > 0
    assert all(source != host and same for source, host, same in moved)


def test_cpu_tensors_stay_by_default(monkeypatch):
    """Off CUDA the host is the device: the default devices leave CPU tensors alone."""
    monkeypatch.setattr(offload, "_to_host", lambda t: pytest.fail("a CPU tensor was copied to the host"))
    unet = _unet()
    unet.enable_gradient_checkpointing(offload.offloaded_checkpointing())
    unet(**_inputs()).sample.pow(2).mean().backward()


def _expected_saved_bytes() -> int:
    """Independently of the offload code: the storages plain checkpointing keeps as block inputs
    (first arguments) that nothing else outside the blocks keeps for backward, in bytes."""
    block_inputs, elsewhere, inside = {}, {}, [False]

    def pack(tensor):
        if not inside[0]:  # inside a call, only the checkpoint's own save of its inputs reaches this hook
            elsewhere[tensor.untyped_storage()._cdata] = tensor.untyped_storage()
        return tensor

    def recording(module, hidden_states, *args):
        block_inputs[hidden_states.untyped_storage()._cdata] = hidden_states.untyped_storage()
        inside[0] = True
        try:
            return checkpoint(module.__call__, hidden_states, *args, use_reentrant=False)
        finally:
            inside[0] = False

    unet = _unet()
    unet.enable_gradient_checkpointing(recording)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):  # storages held: no handle is reused
        unet(**_inputs())
    return sum(s.nbytes() for key, s in block_inputs.items() if key not in elsewhere)


def _device_bytes_after_forward(func) -> int:
    """Live meta-device bytes (the planner's accountant) once the forward has run, output held."""
    from loraflow.plan.accountant import MemoryAccountant
    from loraflow.plan.cuda_rules import cuda_rules

    unet = _unet().to("meta")
    unet.enable_gradient_checkpointing(func)
    acct = MemoryAccountant("meta")
    with acct, cuda_rules(None):
        out = unet(**_inputs("meta")).sample
        live = acct.current
    del out
    return live


def test_planner_counts_the_moved_inputs_off_the_device():
    plain = _device_bytes_after_forward(None)
    moved = _device_bytes_after_forward(offload.offloaded_checkpointing())
    expected = _expected_saved_bytes()
    assert expected > 0 and plain - moved == expected, (plain, moved, expected)


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_planned_step_below_plain_checkpointing(tmp_path, family):
    from loraflow.train.config import TrainConfig
    from loraflow.train.plan import plan_train

    def step_peak(**flags):
        config = TrainConfig(model=f"tiny:{family}", dataset="x", output=str(tmp_path / "out"), resolution=64,
                             batch_size=2, lora_rank=4, mixed_precision="bf16", seed=0, **flags)
        return next(p for p in plan_train(config).phases if p.name == "training step").peak_bytes

    plain = step_peak(gradient_checkpointing=True)
    moved = step_peak(checkpoint_offload=True)
    assert moved < plain, (moved, plain)
