"""Tiny random IP-Adapters and CLIP image encoders for the tiny models (models/tiny.py), written in
the family's hub layout (`IPAdapterLayout`) so tests and demos go through the real file search.

    save_tiny_ip_adapter("kolors", "/tmp/ipa", plus=True)  # ip_adapter_plus_general.safetensors + image_encoder/

The files use the original IP-Adapter key names (`image_proj.*`, `ip_adapter.{1,3,5...}.to_k_ip.weight`,
tencent-ailab/IP-Adapter `ip_adapter/ip_adapter.py`), which diffusers' `load_ip_adapter` converts.
"""
from __future__ import annotations

from pathlib import Path

from loraflow.atomic import apply_umask
from loraflow.models.families import get_family

TINY_ENCODER = dict(hidden_size=32, intermediate_size=37, projection_dim=16, num_hidden_layers=2,
                    num_attention_heads=4, image_size=32, patch_size=8)
TOKENS = 4  # image tokens the adapter adds to each cross-attention (4 in the plain IP-Adapter)
WEIGHT_STD = 0.3  # larger than PyTorch's default init, so a tiny adapter visibly moves a 2-step image


def tiny_image_encoder(seed: int = 0):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_ENCODER)).eval()


def _plain_image_proj(cross: int, width: int, gen) -> dict:
    import torch

    return {"proj.weight": torch.randn(TOKENS * cross, width, generator=gen) * WEIGHT_STD,
            "proj.bias": torch.zeros(TOKENS * cross),
            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)}


def _plus_image_proj(cross: int, width: int) -> dict:
    """A Resampler in the original key names: diffusers' module, its names mapped back (the inverse
    of loaders/unet.py `_convert_ip_adapter_image_proj_to_diffusers`)."""
    import torch
    from diffusers.models.embeddings import IPAdapterPlusImageProjection

    module = IPAdapterPlusImageProjection(embed_dims=width, output_dims=cross, hidden_dims=64, depth=4,
                                          dim_head=64, heads=1, num_queries=TOKENS)
    out = {}
    for key, value in module.state_dict().items():
        parts = key.split(".")
        if parts[0] != "layers":
            out[key] = value
            continue
        i, rest = parts[1], ".".join(parts[2:])
        if rest.startswith("ln0."):
            out[f"layers.{i}.0.norm1.{rest[4:]}"] = value
        elif rest.startswith("ln1."):
            out[f"layers.{i}.0.norm2.{rest[4:]}"] = value
        elif rest == "attn.to_q.weight":
            out[f"layers.{i}.0.to_q.weight"] = value
        elif rest == "attn.to_k.weight":  # to_k and to_v are one to_kv in the original
            v = module.state_dict()[f"layers.{i}.attn.to_v.weight"]
            out[f"layers.{i}.0.to_kv.weight"] = torch.cat([value, v])
        elif rest == "attn.to_out.0.weight":
            out[f"layers.{i}.0.to_out.weight"] = value
        elif rest.startswith("ff."):
            sub = {"ff.0": "1.0", "ff.1.net.0.proj": "1.1", "ff.1.net.2": "1.3"}
            head, _, leaf = rest.rpartition(".")
            out[f"layers.{i}.{sub[head]}.{leaf}"] = value
    return out


def tiny_ip_adapter_state(family: str, plus: bool = False, seed: int = 0) -> dict:
    """Flat `image_proj.*` / `ip_adapter.*` tensors fitting the family's tiny UNet."""
    import torch
    from diffusers import UNet2DConditionModel

    from loraflow.models.tiny import UNET_COMMON

    unet = UNet2DConditionModel(**UNET_COMMON, **get_family(family).tiny_unet)
    cross = unet.config.cross_attention_dim
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if plus:
        proj = _plus_image_proj(cross, TINY_ENCODER["hidden_size"])
    else:
        proj = _plain_image_proj(cross, TINY_ENCODER["projection_dim"], gen)
    state = {f"image_proj.{k}": v.contiguous() for k, v in proj.items()}
    channels = unet.config.block_out_channels
    key_id = 1  # the attn2 processors in `unet.attn_processors` order get 1, 3, 5, ... (attn1 the even ones)
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        block = name.split(".")
        hidden = (channels[-1] if block[0] == "mid_block" else
                  list(reversed(channels))[int(block[1])] if block[0] == "up_blocks" else channels[int(block[1])])
        for which in ("to_k_ip", "to_v_ip"):
            state[f"ip_adapter.{key_id}.{which}.weight"] = torch.randn(hidden, cross, generator=gen) * WEIGHT_STD
        key_id += 2
    return state


def save_tiny_ip_adapter(family: str, out_dir: str | Path, plus: bool = False, seed: int = 0) -> Path:
    """Write a tiny adapter and its image encoder into `out_dir` in the family's layout; returns the folder."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    layout = get_family(family).ip_adapter
    out_dir = Path(out_dir)
    names = [n for n in layout.weight_names if n.endswith(".safetensors")]
    weights = out_dir / next((n for n in names if ("plus" in n) == plus), names[0])
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_ip_adapter_state(family, plus, seed), str(weights))
    encoder_dir = out_dir / layout.image_encoders[-1]
    tiny_image_encoder(seed + 1).save_pretrained(encoder_dir, safe_serialization=True)
    size = TINY_ENCODER["image_size"]
    CLIPImageProcessor(size=size, crop_size=size).save_pretrained(encoder_dir)
    return apply_umask(out_dir)
