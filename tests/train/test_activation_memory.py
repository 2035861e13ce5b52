"""Recomputing the feed-forward gates keeps fewer activations and changes no gradient."""
from __future__ import annotations

import torch


def _unet_with_lora(seed: int = 0):
    from peft import LoraConfig

    from loraflow.models.tiny import build_tiny_components

    unet = build_tiny_components("sdxl", seed=seed)["unet"]
    unet.requires_grad_(False)
    torch.manual_seed(seed)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    for name, param in unet.named_parameters():
        if "lora_B" in name:  # B starts at zero; make the adapters do something
            torch.nn.init.normal_(param, std=0.1)
    return unet.train()


def _inputs():
    gen = torch.Generator().manual_seed(1)
    return dict(sample=torch.randn(2, 4, 8, 8, generator=gen), timestep=torch.tensor([10, 700]),
                encoder_hidden_states=torch.randn(2, 77, 64, generator=gen),
                added_cond_kwargs={"text_embeds": torch.randn(2, 32, generator=gen),
                                   "time_ids": torch.randn(2, 6, generator=gen)})


def _loss_and_grads(unet):
    loss = unet(**_inputs()).sample.pow(2).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in unet.named_parameters() if p.requires_grad}


def test_gradients_are_bit_identical():
    from loraflow.train.activation_memory import recompute_feed_forward_gates

    stock_loss, stock_grads = _loss_and_grads(_unet_with_lora())
    unet = _unet_with_lora()
    blocks = sum(type(m).__name__ == "BasicTransformerBlock" for m in unet.modules())
    assert recompute_feed_forward_gates(unet) == blocks > 0  # one GEGLU per transformer block
    loss, grads = _loss_and_grads(unet)
    assert torch.equal(loss, stock_loss)
    assert grads.keys() == stock_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert torch.equal(grad, stock_grads[name]), name


def test_fewer_bytes_kept_for_backward():
    from loraflow.train.activation_memory import recompute_feed_forward_gates, saved_tensor_bytes

    unet = _unet_with_lora()
    before = saved_tensor_bytes(lambda: unet(**_inputs()), unet)
    recompute_feed_forward_gates(unet)
    after = saved_tensor_bytes(lambda: unet(**_inputs()), unet)
    assert after < 0.95 * before, (before, after)


def test_inference_output_unchanged():
    from loraflow.train.activation_memory import recompute_feed_forward_gates

    unet = _unet_with_lora().eval()
    with torch.no_grad():
        stock = unet(**_inputs()).sample
        recompute_feed_forward_gates(unet)
        assert torch.equal(unet(**_inputs()).sample, stock)
