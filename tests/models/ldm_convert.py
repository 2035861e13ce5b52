"""Test helper: a diffusers pipeline -> one checkpoint in the ORIGINAL key layout (what Civitai ships).

SD1.5: CompVis LDM (`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.transformer.*`);
SDXL: Stability SGM (`conditioner.embedders.0.transformer.*` for CLIP ViT-L,
`conditioner.embedders.1.model.*` in OpenCLIP layout for bigG). The mappings follow diffusers'
`scripts/convert_diffusers_to_original_stable_diffusion.py` and `..._sdxl.py`, generalised from
their hard-coded block counts to any `layers_per_block` / number of levels, so the tiny models work.
"""
from __future__ import annotations

import re

import torch

RESNET_PARTS = {  # diffusers ResnetBlock2D -> ldm ResBlock
    "norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection",
}


def _unet_prefix_map(config) -> list[tuple[str, str, bool]]:
    """(diffusers prefix, ldm prefix, is_resnet), for the UNet described by `config`."""
    L, n = config.layers_per_block, len(config.block_out_channels)
    m = [
        ("time_embedding.linear_1.", "time_embed.0.", False), ("time_embedding.linear_2.", "time_embed.2.", False),
        ("add_embedding.linear_1.", "label_emb.0.0.", False), ("add_embedding.linear_2.", "label_emb.0.2.", False),
        ("conv_in.", "input_blocks.0.0.", False), ("conv_norm_out.", "out.0.", False), ("conv_out.", "out.2.", False),
        ("mid_block.resnets.0.", "middle_block.0.", True), ("mid_block.attentions.0.", "middle_block.1.", False),
        ("mid_block.resnets.1.", "middle_block.2.", True),
    ]
    for i in range(n):
        for j in range(L):  # input_blocks: conv_in, then per level L layers (+1 downsampler)
            m.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{i * (L + 1) + j + 1}.0.", True))
            m.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{i * (L + 1) + j + 1}.1.", False))
        m.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (L + 1)}.0.op.", False))
        for j in range(L + 1):  # output_blocks: per level L+1 layers, the last one carries the upsampler
            m.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{i * (L + 1) + j}.0.", True))
            m.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{i * (L + 1) + j}.1.", False))
        slot = 2 if "CrossAttn" in config.up_block_types[i] else 1
        m.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{i * (L + 1) + L}.{slot}.", False))
    return m


def unet_to_ldm(unet) -> dict[str, torch.Tensor]:
    prefixes = _unet_prefix_map(unet.config)
    out = {}
    for key, value in unet.state_dict().items():
        hf, ldm, is_resnet = max((p for p in prefixes if key.startswith(p[0])), key=lambda p: len(p[0]))
        rest = key[len(hf):]
        if is_resnet:
            head, _, tail = rest.partition(".")
            rest = f"{RESNET_PARTS[head]}.{tail}"
        out[ldm + rest] = value
    return out


def vae_to_ldm(vae) -> dict[str, torch.Tensor]:
    n = len(vae.config.block_out_channels)
    renames = []
    for i in range(n):
        for j in range(vae.config.layers_per_block + 1):
            renames.append((f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}."))
            renames.append((f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}."))
        renames.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
        renames.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for k in range(2):
        renames.append((f"mid_block.resnets.{k}.", f"mid.block_{k + 1}."))
    renames += [("mid_block.attentions.0.", "mid.attn_1."), ("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut.")]
    attn = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
    out = {}
    for key, value in vae.state_dict().items():
        new = key
        for hf, ldm in renames:
            new = new.replace(hf, ldm)
        if ".mid.attn_1." in new:
            for hf, ldm in attn:
                new = new.replace(hf, ldm)
            if new.endswith(("q.weight", "k.weight", "v.weight", "proj_out.weight")):
                value = value.reshape(*value.shape, 1, 1)  # ldm uses 1x1 convs, diffusers linears
        out[new] = value
    return out


def clip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """HF CLIPTextModel -> `transformer.text_model.*` (transformers >= 5.6 drops `text_model.` when saving)."""
    return {
        k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in text_encoder.state_dict().items()
    }


def openclip_to_ldm(text_encoder) -> dict[str, torch.Tensor]:
    """HF CLIPTextModelWithProjection -> OpenCLIP text tower (fused qkv, `text_projection` as x @ P)."""
    out, qkv = {}, {}
    for key, value in text_encoder.state_dict().items():
        if key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
            continue
        key = key.removeprefix("text_model.")
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out[key.replace("final_layer_norm.", "ln_final.")] = value
        elif key.startswith("encoder.layers."):
            match = re.match(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key)
            if match:
                layer, which, kind = match.groups()
                qkv.setdefault((layer, kind), {})[which] = value
                continue
            new = key.replace("encoder.layers.", "transformer.resblocks.").replace(".self_attn.", ".attn.")
            new = new.replace("layer_norm1", "ln_1").replace("layer_norm2", "ln_2")
            out[new.replace(".mlp.fc1.", ".mlp.c_fc.").replace(".mlp.fc2.", ".mlp.c_proj.")] = value
    for (layer, kind), parts in qkv.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def pipeline_to_original(pipe, family: str) -> dict[str, torch.Tensor]:
    """The single-file state dict of a diffusers SD1.5 / SDXL pipeline."""
    state = {f"model.diffusion_model.{k}": v for k, v in unet_to_ldm(pipe.unet).items()}
    state.update({f"first_stage_model.{k}": v for k, v in vae_to_ldm(pipe.vae).items()})
    if family == "sd15":
        state.update({f"cond_stage_model.transformer.{k}": v for k, v in clip_to_ldm(pipe.text_encoder).items()})
    else:
        state.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in clip_to_ldm(pipe.text_encoder).items()})
        state.update({f"conditioner.embedders.1.model.{k}": v for k, v in openclip_to_ldm(pipe.text_encoder_2).items()})
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_original_checkpoint(pipe, family: str, path) -> None:
    from safetensors.torch import save_file

    save_file(pipeline_to_original(pipe, family), str(path))
