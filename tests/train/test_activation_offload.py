"""Activation offload, with checkpointing (the block inputs) and without (every saved activation): the
same gradients as without it, the tensors really leave the device (a distinct host copy), and the device
bytes it saves are what an independent count of the saved tensors says."""
from __future__ import annotations

import pytest
import torch
from torch.utils.checkpoint import checkpoint

import loraflow.train.activation_offload as offload


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


def _assert_same_lora_grads(plain, moving):
    """One backward of the same loss through both UNets: their LoRA gradients are bit-equal."""
    grads = []
    for unet in (plain, moving):
        unet(**_inputs()).sample.pow(2).mean().backward()
        grads.append({n: p.grad for n, p in unet.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


def test_gradients_bit_equal_to_plain_checkpointing(monkeypatch):
    moved = []
    to_host = offload._to_host

    def recording(tensor):
        host = to_host(tensor)
        moved.append((tensor.untyped_storage().data_ptr(), host.untyped_storage().data_ptr(),
                      torch.equal(host, torch.tensor([], dtype=torch.uint8).set_(tensor.untyped_storage()))))
        return host

    monkeypatch.setattr(offload, "_to_host", recording)
    plain, moving, calls = _unet(), _unet(), []

    def counting(module, *args):  # plain checkpointing, counting the blocks diffusers checkpoints
        calls.append(module)
        return checkpoint(module.__call__, *args, use_reentrant=False)

    plain.enable_gradient_checkpointing(counting)
    moving.enable_gradient_checkpointing(offload.offloaded_checkpointing(devices=("cpu",)))  # the mechanics on CPU
    _assert_same_lora_grads(plain, moving)
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
    moved = step_peak(gradient_checkpointing=True, offload_activations=True)
    assert moved < plain, (moved, plain)


# ---- without checkpointing: every saved activation --------------------------------------------------
def _keep_less(unet):
    """The activation-memory patches training applies (model_setup.prepare_unet, no checkpointing)."""
    from loraflow.train.activation_memory import keep_less_for_backward, recompute_feed_forward_gates

    recompute_feed_forward_gates(unet)
    return keep_less_for_backward(unet)


@pytest.mark.parametrize("patched", [False, True], ids=["stock", "activation_memory"])
def test_gradients_bit_equal_without_checkpointing(monkeypatch, patched):
    import loraflow.train.activation_memory as activation_memory

    monkeypatch.setattr(activation_memory, "_MIN_ELEMENTS", 0)  # the tiny model's tensors take the patched paths
    norm_outputs = []

    class Recording(activation_memory._NormOutput):  # the recomputed norm outputs, whose input is offloaded too
        def __init__(self, *args):
            super().__init__(*args)
            norm_outputs.append(self)

    monkeypatch.setattr(activation_memory, "_NormOutput", Recording)
    plain, moving = _unet(), _unet()
    if patched:
        assert _keep_less(plain)["attention"] > 0 and _keep_less(moving)["attention"] > 0
    traffic = offload.Traffic()
    offload.offload_saved_activations(moving, devices=("cpu",), min_bytes=0, traffic=traffic)  # the mechanics on CPU
    _assert_same_lora_grads(plain, moving)
    assert traffic.copies > 0 and traffic.to_host_bytes > 0
    if patched:  # in the offloaded run each recomputed norm output's input was a host copy
        offloaded = norm_outputs[len(norm_outputs) // 2:]
        assert offloaded and all(isinstance(n.x, offload._Saved) for n in offloaded)


def _saved_elsewhere_bytes(inputs) -> int:
    """Independently of the offload code: the storages autograd keeps for a plain forward that are not
    parameters, buffers or the inputs / output the caller holds, in bytes."""
    unet = _unet().to("meta")
    _keep_less(unet)
    held = {t.untyped_storage()._cdata for t in (*unet.parameters(), *unet.buffers())}
    held |= {t.untyped_storage()._cdata for t in (inputs["sample"], inputs["encoder_hidden_states"],
                                                   *inputs["added_cond_kwargs"].values())}
    saved = {}

    def pack(tensor):
        saved.setdefault(tensor.untyped_storage()._cdata, tensor.untyped_storage())
        return tensor

    from loraflow.plan.cuda_rules import cuda_rules

    with cuda_rules(None), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = unet(**inputs).sample
    held.add(out.untyped_storage()._cdata)
    return sum(s.nbytes() for key, s in saved.items() if key not in held)


def test_planner_counts_every_saved_activation_off_the_device(monkeypatch):
    """On the meta device (the planner's CUDA), with the activation-memory patches as training applies
    them: after the forward only what autograd does not keep is left of the activations."""
    from loraflow.plan.accountant import MemoryAccountant
    from loraflow.plan.cuda_rules import cuda_rules

    monkeypatch.setattr("loraflow.train.activation_memory._MIN_ELEMENTS", 0)
    inputs = _inputs("meta")

    traffic = offload.Traffic()

    def live_after_forward(offloaded: bool) -> int:
        unet = _unet().to("meta")
        _keep_less(unet)
        if offloaded:
            offload.offload_saved_activations(unet, min_bytes=0, traffic=traffic)
        with MemoryAccountant("meta") as acct, cuda_rules(None):
            out = unet(**inputs).sample
            live = acct.current
            out.sum().backward()
        return live

    plain, moved = live_after_forward(False), live_after_forward(True)
    expected = _saved_elsewhere_bytes(inputs)
    assert expected > 0 and plain - moved == expected, (plain, moved, expected)
    # each host copy comes back once, however many saved views of it backward reads
    assert traffic.to_device_bytes == traffic.to_host_bytes > 0


@pytest.mark.parametrize("family", ["sdxl", "kolors"])
def test_planned_step_below_plain_without_checkpointing(tmp_path, monkeypatch, family):
    from loraflow.train.config import TrainConfig
    from loraflow.train.plan import plan_train

    monkeypatch.setattr(offload, "MIN_BYTES", 0)  # the tiny model's activations are all below 1 MiB

    def plan(**flags):
        config = TrainConfig(model=f"tiny:{family}", dataset="x", output=str(tmp_path / "out"), resolution=64,
                             batch_size=2, lora_rank=4, mixed_precision="bf16", seed=0, **flags)
        result = plan_train(config)
        return next(p for p in result.phases if p.name == "training step"), result.notes

    (plain, _), (moved, notes) = plan(), plan(offload_activations=True)
    assert moved.peak_bytes < plain.peak_bytes, (moved.peak_bytes, plain.peak_bytes)
    assert moved.by_category["activations"] < plain.by_category["activations"]
    assert any(n.startswith("offload_activations: ") and "GiB to the host" in n for n in notes), notes


def test_training_run_with_offload_equals_one_without(tmp_path, shapes_dataset, monkeypatch):
    """The whole training command (accelerate's wrapping of the UNet included), the offload forced onto
    the CPU for every saved activation: the same LoRA, bit for bit."""
    import functools

    from safetensors.torch import load_file
    from train_helpers import base_config

    from loraflow.train.trainer import train

    plain = train(base_config(tmp_path / "plain", shapes_dataset, max_steps=2, batch_size=2))
    traffic = offload.Traffic()
    forced = functools.partial(offload.offload_saved_activations, devices=("cpu",), min_bytes=0, traffic=traffic)
    monkeypatch.setattr(offload, "offload_saved_activations", lambda model, traffic=None: forced(model))
    moved = train(base_config(tmp_path / "moved", shapes_dataset, max_steps=2, batch_size=2, offload_activations=True))
    assert traffic.copies > 0
    a, b = load_file(plain.lora_path), load_file(moved.lora_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
