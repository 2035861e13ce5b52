"""Keeping fewer activations for backward changes no gradient (bf16: within rounding) and keeps what
an independent count says."""
from __future__ import annotations

import types

import pytest
import torch

from loraflow.train.activation_memory import (keep_less_for_backward, recompute_feed_forward_gates,
                                              saved_tensor_bytes)

BF16 = 2  # bytes


@pytest.fixture(autouse=True)
def _every_size(monkeypatch):
    """The tiny models' tensors take the savings' code too (normally: full-size tensors only)."""
    monkeypatch.setattr("loraflow.train.activation_memory._MIN_ELEMENTS", 0)


def _unet_with_lora(seed: int = 0, dtype=torch.float32):
    from peft import LoraConfig

    from loraflow.models.tiny import build_tiny_components

    unet = build_tiny_components("sdxl", seed=seed)["unet"].to(dtype)
    unet.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in unet.named_parameters():
        if "lora_" in name:  # fp32 adapters, as model_setup.add_lora; B starts at zero: make them do something
            param.data = param.data.float()
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
    return unet.train()


def _patched(unet, recompute="none"):
    """As model_setup.prepare_unet does it for `recompute`."""
    recompute_feed_forward_gates(unet, projection=recompute != "none")
    return keep_less_for_backward(unet, cross_attention=recompute == "ff+cross")


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(2, 4, 8, 8, generator=gen), timestep=torch.tensor([10, 700]),
                encoder_hidden_states=torch.randn(2, 77, 64, generator=gen),
                added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=gen),
                                   "time_ids": torch.randn(2, 6, generator=gen)})


def _loss_and_grads(unet, autocast=False):
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        loss = unet(**_inputs()).sample.float().pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("recompute,checkpointing", [("none", False), ("ff", False), ("ff+cross", False),
                                                     ("none", True)])
def test_fp32_gradients_are_bit_identical(recompute, checkpointing, monkeypatch):
    """fp32 training runs the same ops on the same values: the norms keep fp32 inputs as autograd
    would, the fused SiLU's input and the recomputed matmuls come from the same kernels on the same
    inputs, a frozen conv's input gradient from the same convolution_backward. Group norms run in
    blocks of groups here too (at full size only, normally)."""
    monkeypatch.setattr("loraflow.train.activation_memory._BLOCK_ELEMENTS", 0)
    stock = _unet_with_lora()
    unet = _unet_with_lora()
    if checkpointing:
        stock.enable_gradient_checkpointing()
        unet.enable_gradient_checkpointing()
    stock_loss, stock_grads = _loss_and_grads(stock)
    blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in unet.modules())
    resnets = sum(type(m).__name__ == "ResnetBlock2D" for m in unet.modules())
    assert recompute_feed_forward_gates(unet, recompute != "none") == blocks > 0  # one GEGLU per block
    counts = keep_less_for_backward(unet, cross_attention=recompute == "ff+cross")
    assert counts["resnets"] == resnets > 0 and counts["lora"] == 8 * blocks  # 4 targets x 2 attentions
    assert counts["attention"] == 2 * blocks
    loss, grads = _loss_and_grads(unet)
    assert torch.equal(loss, stock_loss)
    assert grads.keys() == stock_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.equal(grad, stock_grads[name]), name


def _relative_error(grads, reference) -> float:
    diff = torch.cat([(grads[n] - reference[n]).flatten() for n in reference])
    return (diff.norm() / torch.cat([g.flatten() for g in reference.values()]).norm()).item()


def test_bf16_autocast_gradients_as_close_to_fp32_as_stock():
    """Under autocast the norms round their fp32 output to bf16 once (stock CPU autocast runs layer
    norm in bf16 itself; CUDA's in fp32 and every adapter rounds its own copy), and the adapters
    reading one norm output sum their gradients in bf16. Not bit for bit then: the patched run must
    be as close to the fp32 gradients of the same (bf16-rounded) weights as the stock bf16 run is."""
    stock_loss, stock_grads = _loss_and_grads(_unet_with_lora(dtype=torch.bfloat16), autocast=True)
    unet = _unet_with_lora(dtype=torch.bfloat16)
    _patched(unet)
    loss, grads = _loss_and_grads(unet, autocast=True)
    _, reference = _loss_and_grads(_unet_with_lora(dtype=torch.bfloat16).float())
    stock_error, error = _relative_error(stock_grads, reference), _relative_error(grads, reference)
    assert 0 < stock_error < 0.05 and error <= 1.25 * stock_error, (stock_error, error)
    assert torch.allclose(loss, stock_loss, rtol=2 ** -7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inference_output_unchanged(dtype):
    unet = _unet_with_lora(dtype=dtype).eval()
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=dtype == torch.bfloat16):
        stock = unet(**_inputs()).sample
        _patched(unet, recompute="ff+cross")
        assert torch.equal(unet(**_inputs()).sample, stock)


def test_whole_unet_keeps_less():
    """The tiny UNet (32 channels, 4x4 tokens) gains less than the full size one (see the module
    docstring): CPU autocast runs layer norm in bf16, so it keeps no fp32 copy to drop."""
    kept = {}
    for recompute in (None, "none", "ff", "ff+cross"):
        unet = _unet_with_lora(dtype=torch.bfloat16)
        if recompute is not None:
            _patched(unet, recompute)
        with torch.autocast("cpu", torch.bfloat16):
            kept[recompute] = saved_tensor_bytes(lambda: unet(**_inputs()), unet)
    assert kept["ff+cross"] < kept["ff"] < kept["none"] < 0.9 * kept[None], kept


# ---- each saving against a count of what backward needs ------------------------------------------
def _frozen(module, dtype=torch.float32):
    return module.to(dtype).requires_grad_(False)


def test_frozen_conv_keeps_only_its_weight():
    conv = _frozen(torch.nn.Conv2d(8, 16, 3, padding=1))
    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    assert saved_tensor_bytes(lambda: conv(x), conv) == x.nbytes  # stock: the input
    stock = torch.autograd.grad(conv(x).sum(), x)[0]
    keep_less_for_backward(conv)
    assert saved_tensor_bytes(lambda: conv(x), conv) == 0
    assert torch.equal(torch.autograd.grad(conv(x).sum(), x)[0], stock)


def test_layer_norm_keeps_a_bf16_input_under_autocast():
    from loraflow.plan.cuda_rules import cuda_rules

    norm = _frozen(torch.nn.LayerNorm(64, device="meta"), torch.bfloat16)
    x = torch.randn(2, 10, 64, dtype=torch.bfloat16, device="meta", requires_grad=True)
    stats = 2 * (2 * 10) * 4  # mean and rstd: one fp32 per row
    module = types.SimpleNamespace(parameters=norm.parameters)
    with cuda_rules(torch.bfloat16):  # the planner's CUDA autocast: layer_norm in fp32
        # stock: fp32 copies of x and of the bf16 weight and bias; patched: x itself (weights are kept anyway)
        assert saved_tensor_bytes(lambda: norm(x), module) == (x.numel() + 2 * 64) * 4 + stats
        keep_less_for_backward(norm)
        out = norm(x)
        assert saved_tensor_bytes(lambda: norm(x), module) == x.numel() * BF16 + stats
    assert out.dtype == torch.bfloat16  # the dtype the next linear layer casts to


def test_adapters_share_their_input_under_autocast():
    """to_q/k/v read one norm output: stock keeps a bf16 copy per adapter (peft casts the input up to
    the adapter's fp32, autocast casts it back down), patched keeps the input itself once."""
    from peft import LoraConfig, inject_adapter_in_model

    layers = torch.nn.ModuleDict({n: torch.nn.Linear(64, 64) for n in ("to_q", "to_k", "to_v")})
    _frozen(layers, torch.bfloat16)
    inject_adapter_in_model(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v"]), layers)
    for p in layers.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    x = torch.randn(3, 64, dtype=torch.bfloat16, requires_grad=True)
    run = lambda: [layers[n](x) for n in layers]  # noqa: E731
    # per adapter: lora_B keeps lora_A's (3, r) output, and both keep autocast's bf16 copy of their weight
    per_adapter = 3 * 4 * BF16 + 2 * 64 * 4 * BF16
    with torch.autocast("cpu", torch.bfloat16):
        assert saved_tensor_bytes(run, layers) == 3 * (x.nbytes + per_adapter)
        assert keep_less_for_backward(layers)["lora"] == 3
        assert saved_tensor_bytes(run, layers) == x.nbytes + 3 * per_adapter


def test_resnet_keeps_its_two_norm_inputs():
    """fp32 ResnetBlock2D: norm1's and norm2's inputs and their statistics; stock also keeps both
    SiLU inputs and both convolution inputs (the time embedding needs no gradient here)."""
    from diffusers.models.resnet import ResnetBlock2D

    block = _frozen(ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=16, groups=8))
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    temb = torch.randn(2, 16)
    stats = 2 * 2 * (2 * 8) * 4  # two norms x (mean, rstd) of (N, groups) fp32
    stock = saved_tensor_bytes(lambda: block(x, temb), block)
    keep_less_for_backward(block)
    assert saved_tensor_bytes(lambda: block(x, temb), block) == 2 * x.nbytes + stats
    assert stock == 6 * x.nbytes + stats


def test_planner_autocast_is_meta_only_and_restored():
    from loraflow.plan.cuda_rules import cuda_rules

    with cuda_rules(torch.bfloat16):
        assert torch.is_autocast_enabled("meta") and not torch.is_autocast_enabled("cpu")
    with pytest.raises(RuntimeError):  # torch's own answer again: meta is no autocast device
        torch.is_autocast_enabled("meta")
    with cuda_rules(None):  # no mixed precision: nothing autocasts
        assert not torch.is_autocast_enabled("cpu")


def test_attention_adapters_remake_the_norm_output():
    """fp32 BasicTransformerBlock with LoRA on attention: attn1's adapters (to_q/k/v) and attn2's
    to_q keep norm1's and norm2's outputs; remade in backward from the norms' inputs, two outputs
    of the hidden states' size are no longer kept, and the gradients stay the same."""
    from diffusers.models.attention import BasicTransformerBlock
    from peft import LoraConfig, inject_adapter_in_model

    def block():
        torch.manual_seed(0)
        module = _frozen(BasicTransformerBlock(32, 2, 16, cross_attention_dim=24))
        inject_adapter_in_model(LoraConfig(r=4, init_lora_weights="gaussian",
                                           target_modules=["to_q", "to_k", "to_v", "to_out.0"]), module)
        for name, param in module.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        return module

    hidden = torch.randn(2, 10, 32, requires_grad=True)
    context = torch.randn(2, 7, 24)
    kept, remade = block(), block()
    keep_less_for_backward(kept, norm_outputs=False)
    counts = keep_less_for_backward(remade)
    assert counts["attention"] == 2
    run = lambda m: m(hidden, encoder_hidden_states=context)  # noqa: E731
    kept_bytes = saved_tensor_bytes(lambda: run(kept), kept)
    assert saved_tensor_bytes(lambda: run(remade), remade) == kept_bytes - 2 * hidden.nbytes
    for module in (kept, remade):
        run(module).pow(2).sum().backward()
    for (name, a), (_, b) in zip(kept.named_parameters(), remade.named_parameters()):
        if a.requires_grad:
            assert torch.equal(a.grad, b.grad), name


def test_small_tensors_take_the_stock_path(monkeypatch):
    """Below the size limit nothing changes: the same bytes are kept as by the stock modules."""
    from diffusers.models.resnet import ResnetBlock2D

    monkeypatch.setattr("loraflow.train.activation_memory._MIN_ELEMENTS", 32 * 6 * 6 * 2 + 1)
    block = _frozen(ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=16, groups=8))
    x = torch.randn(2, 32, 6, 6, requires_grad=True)
    stock = saved_tensor_bytes(lambda: block(x, torch.randn(2, 16)), block)
    keep_less_for_backward(block)
    assert saved_tensor_bytes(lambda: block(x, torch.randn(2, 16)), block) == stock
