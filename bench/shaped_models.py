"""SDXL and Kolors at full size or scaled down by k, for bench/train.py, with FLOP accounting.

`shapes(family, k)` keeps the real architecture (block layout, depths, head counts) and divides
  - every width (channels, hidden sizes, vocabularies) by k: UNet/VAE weights shrink k^2,
  - the image's pixel count by k (1024 px -> 1024/sqrt(k)): UNet and VAE FLOPs and activations
    (pixels x width^2, pixels^2 x width, pixels x width) then shrink by k^3, k^3 and k^2 alike,
  - text-encoder depth by k, token counts kept (77 CLIP, 256 ChatGLM): their FLOPs shrink k^3 too.
So the VAE's, the text encoders' and the UNet's shares of a training step's FLOPs stay the real
ones (`flops()` counts both on the meta device, bench/train.py prints them side by side). Text-encoder
weights shrink k^3 instead of k^2: the reference holds k times too little of them, which makes the
memory ratio conservative (worse for loraflow than at full size).

Sources: SDXL configs in src/loraflow/models/configs/sdxl; Kolors = SDXL's UNet with
`encoder_hid_dim_type="text_proj"` (4096 -> 2048) and ChatGLM3-6B (28 layers, hidden 4096,
FFN 13696, 32 heads, 2 KV groups), prompts padded to 256 tokens (Kwai-Kolors/Kolors-diffusers).
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "src" / "loraflow" / "models" / "configs" / "sdxl"
RESOLUTION = 1024
TEXT_TOKENS = {"sdxl": 77, "kolors": 256}


def _config(name: str) -> dict:
    data = json.loads((CONFIGS / name / "config.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype")}


def resolution(k: int) -> int:
    root = math.isqrt(k)
    if root * root != k:
        raise SystemExit(f"scale must be a square (1, 4, 16): {k}")
    return RESOLUTION // root


def shapes(family: str, k: int = 1) -> dict:
    """Configs of every component of `family` scaled by k (module docstring; k=1: the real model)."""
    resolution(k)
    unet = _config("unet")
    unet.update(block_out_channels=[c // k for c in unet["block_out_channels"]],
                norm_num_groups=math.gcd(32, unet["block_out_channels"][0] // k),  # groups divide channels
                cross_attention_dim=unet["cross_attention_dim"] // k,
                addition_time_embed_dim=unet["addition_time_embed_dim"] // k)
    vae = _config("vae")
    vae.update(block_out_channels=[c // k for c in vae["block_out_channels"]],
               norm_num_groups=math.gcd(32, vae["block_out_channels"][0] // k))
    time_ids = 6 * unet["addition_time_embed_dim"]
    if family == "sdxl":
        encoders = []
        for name in ("text_encoder", "text_encoder_2"):
            c = _config(name)
            c.update(hidden_size=c["hidden_size"] // k, intermediate_size=c["intermediate_size"] // k,
                     num_hidden_layers=max(2, c["num_hidden_layers"] // k),  # >= 2: SDXL reads the penultimate
                     projection_dim=c.get("projection_dim", 768) // k, vocab_size=c["vocab_size"] // k)
            encoders.append(c)
        unet["projection_class_embeddings_input_dim"] = encoders[1]["hidden_size"] + time_ids
        return {"unet": unet, "vae": vae, "clip": encoders}
    if family != "kolors":
        raise SystemExit(f"unknown family {family!r}: sdxl or kolors")
    glm = dict(num_layers=max(2, 28 // k), hidden_size=4096 // k, ffn_hidden_size=13696 // k, num_attention_heads=32,
               kv_channels=128 // k, multi_query_attention=True, multi_query_group_num=2,
               padded_vocab_size=65024 // k, seq_length=TEXT_TOKENS["kolors"], original_rope=True)
    unet.update(encoder_hid_dim_type="text_proj", encoder_hid_dim=glm["hidden_size"],
                projection_class_embeddings_input_dim=glm["hidden_size"] + time_ids)
    return {"unet": unet, "vae": vae, "chatglm": glm}


def build(family: str, k: int, meta: bool = False) -> dict:
    """Modules of `shapes(family, k)`; `meta=True` builds them on the meta device (no memory: for
    counting FLOPs of the full-size models)."""
    import torch

    s = shapes(family, k)
    with torch.device("meta") if meta else contextlib.nullcontext():
        return _build(family, s, meta)


def _build(family: str, s: dict, meta: bool) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    modules = {"unet": UNet2DConditionModel(**s["unet"]), "vae": AutoencoderKL(**s["vae"])}
    if family == "sdxl":
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig(**s["clip"][0]))
        modules["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**s["clip"][1]))
    else:
        from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

        from loraflow.models.tiny_text_encoders import init_chatglm_weights

        # ChatGLM builds its layers with `skip_init` on its own `device` argument, not the default device
        glm = ChatGLMModel(ChatGLMConfig(**s["chatglm"], torch_dtype="float32"), device="meta" if meta else None)
        modules["text_encoder"] = glm if meta else init_chatglm_weights(glm)
    return modules


def flops(family: str, k: int = 1, batch: int = 1, rank: int = 16) -> dict:
    """FLOPs of one training sample's parts: UNet forward+backward with LoRA on the attention
    projections, VAE encode, text encoding, at `resolution(k)`. Counted on the meta device."""
    import torch
    from peft import LoraConfig
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> float:
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    m = build(family, k, meta=True)
    with torch.device("meta"):
        unet, s = m["unet"], shapes(family, k)
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        latent = resolution(k) // 8
        tokens = TEXT_TOKENS[family]
        if family == "sdxl":
            context = s["clip"][0]["hidden_size"] + s["clip"][1]["hidden_size"]
            pooled = s["clip"][1]["projection_dim"]
        else:
            context = pooled = s["chatglm"]["hidden_size"]
        x = torch.randn(batch, 4, latent, latent)
        cond = dict(encoder_hidden_states=torch.randn(batch, tokens, context),
                    added_cond_kwargs={"text_embeds": torch.randn(batch, pooled), "time_ids": torch.randn(batch, 6)})
        ids = torch.zeros(batch, tokens, dtype=torch.long)

        def unet_step():
            unet(x, torch.tensor([500] * batch), **cond).sample.pow(2).mean().backward()

        def text():
            with torch.no_grad():
                if family == "sdxl":
                    m["text_encoder"](ids, output_hidden_states=True)
                    m["text_encoder_2"](ids, output_hidden_states=True)
                else:
                    # no padding mask: building it calls .item(), which meta tensors cannot (masking costs no FLOPs)
                    m["text_encoder"](input_ids=ids, position_ids=torch.arange(tokens).expand(batch, -1),
                                      output_hidden_states=True)

        def vae_encode():
            with torch.no_grad():
                m["vae"].encode(torch.randn(batch, 3, resolution(k), resolution(k)))

        return {"unet_step": count(unet_step), "vae_encode": count(vae_encode), "text_encode": count(text)}


def caching_bound(f: dict) -> float:
    """Throughput ratio if a step costs exactly its FLOPs: (UNet + VAE + text) / UNet."""
    return (f["unet_step"] + f["vae_encode"] + f["text_encode"]) / f["unet_step"]
