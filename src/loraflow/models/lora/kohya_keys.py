"""Module names: diffusers <-> kohya-ss (what A1111, ComfyUI and Civitai files use).

A kohya key is `<prefix>_<module path with '.' replaced by '_'>`, prefix `lora_unet`,
`lora_te` (SD1.5's one text encoder), `lora_te1` / `lora_te2` (SDXL's two):

    lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q    SD1.5 (diffusers names)
    lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q              SDXL, Kolors (SGM names)
    lora_te1_text_model_encoder_layers_0_self_attn_q_proj                   SDXL first text encoder

kohya-ss trains SD1.5 on the diffusers UNet but SDXL on its own copy of Stability's SGM UNet
(sd-scripts `library/sdxl_original_unet.py`), so SDXL-class UNet keys (the families with
`kohya_sgm_unet`) use SGM block names:
`input_blocks.{i}.{0 resnet | 1 attention}`, `middle_block.{0,1,2}`, `output_blocks.{i}.{0,1,2}`,
and SGM resnet layers (`in_layers.2` = conv1, `out_layers.3` = conv2, `emb_layers.1` =
time_emb_proj, `skip_connection` = conv_shortcut). The mapping here is the inverse of diffusers'
`_maybe_map_sgm_blocks_to_diffusers` + `_convert_unet_lora_key`
(`src/diffusers/loaders/lora_conversion_utils.py`). Kolors' UNet has SDXL's block layout, and
ComfyUI reads Kolors LoRAs with SDXL's key map, so Kolors uses SGM names too.

No torch here: these are string functions. A family's text-encoder prefixes are its
`lora_text_encoders` (sd-scripts `networks/lora.py`).
"""
from __future__ import annotations

from dataclasses import dataclass

from loraflow.models.families import FAMILIES, get_family

UNET_PREFIX = "lora_unet_"
# kohya text-encoder prefix -> diffusers pipeline component, over all families (the prefixes are
# kohya's, so no two families map one to different components).
_TE_COMPONENT = {prefix: component for fam in FAMILIES.values() for component, prefix in fam.lora_text_encoders.items()}

# A CLIP encoder layer's LoRA-able parts (transformers' `CLIPEncoderLayer`) -> their names in the
# OpenCLIP layout (`transformer.resblocks.<i>.`) that SDXL's second text encoder has in single-file
# checkpoints and in A1111. q, k and v are row blocks [0:d], [d:2d], [2d:3d] of OpenCLIP's one fused
# `attn.in_proj_weight`, so all three name the `attn` module.
OPENCLIP_PARTS = {"self_attn.q_proj": "attn", "self_attn.k_proj": "attn", "self_attn.v_proj": "attn",
                  "self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


@dataclass(frozen=True)
class SgmLayout:
    """Where SGM block numbers fall in the diffusers UNet (SDXL's layout; Kolors shares it)."""

    layers_per_block: int = 2
    down_has_attention: tuple[bool, ...] = (False, True, True)  # DownBlock2D, CrossAttn, CrossAttn
    up_has_attention: tuple[bool, ...] = (True, True, False)  # CrossAttn, CrossAttn, UpBlock2D


SDXL_LAYOUT = SgmLayout()

# Multi-word module names that must survive the '_' -> '.' round trip, longest first.
_COMPOUNDS = sorted(
    (
        # diffusers UNet
        "down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
        "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv_norm_out",
        "time_embedding", "linear_1", "linear_2", "add_embedding", "encoder_hid_proj",
        # SGM UNet
        "input_blocks", "middle_block", "output_blocks", "in_layers", "out_layers", "emb_layers",
        "skip_connection", "time_embed", "label_emb",
        # CLIP text encoders
        "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj", "final_layer_norm",
        "layer_norm1", "layer_norm2", "text_projection", "token_embedding", "position_embedding",
    ),
    key=lambda c: -c.count("_"),
)
_COMPOUND_TOKENS = {tuple(c.split("_")): c for c in _COMPOUNDS}
_MAX_PARTS = max(len(t) for t in _COMPOUND_TOKENS)

# SGM resnet layer <-> diffusers ResnetBlock2D layer.
_RESNET_TO_SGM = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                  "conv_shortcut": "skip_connection"}
_SGM_TO_RESNET = {v: k for k, v in _RESNET_TO_SGM.items()}
_TOP_TO_SGM = {"conv_in": "input_blocks.0.0", "conv_out": "out.2",
               "time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_SGM_TO_TOP = {v: k for k, v in _TOP_TO_SGM.items()}


class UnmappedModuleError(ValueError):
    """A module name with no kohya/diffusers counterpart (callers turn it into a user error)."""


# ---- diffusers -> kohya ---------------------------------------------------------------------
def diffusers_to_kohya(component: str, module: str, family: str, layout: SgmLayout = SDXL_LAYOUT) -> str:
    """`("unet", "down_blocks.1.attentions.0.proj_in", "sdxl")` -> `lora_unet_input_blocks_4_1_proj_in`."""
    fam = get_family(family)
    if component == "unet":
        name = unet_to_sgm(module, layout) if fam.kohya_sgm_unet else module
        return UNET_PREFIX + name.replace(".", "_")
    prefix = fam.lora_text_encoders.get(component)
    if prefix is None:
        raise UnmappedModuleError(f"{family} has no kohya key scheme for component '{component}'")
    if not module.startswith(("text_model.", "text_projection")):
        module = "text_model." + module  # transformers 5 flattens CLIPTextModel; files keep the old path
    return prefix + module.replace(".", "_")


def unet_to_sgm(module: str, layout: SgmLayout = SDXL_LAYOUT) -> str:
    """diffusers UNet module path -> SGM path (`mid_block.attentions.0.proj_in` -> `middle_block.1.proj_in`).

    Modules outside the SGM block structure (e.g. Kolors' `encoder_hid_proj`) keep their name.
    """
    if module in _TOP_TO_SGM:
        return _TOP_TO_SGM[module]
    parts = module.split(".")
    n = layout.layers_per_block + 1  # slots per level: the layers, then the down/up sampler
    head = parts[0]
    if head in ("down_blocks", "up_blocks") and len(parts) >= 4:
        block, kind, idx, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        if head == "down_blocks":
            if kind == "downsamplers":
                return f"input_blocks.{(block + 1) * n}.0.op"
            slot = f"input_blocks.{1 + block * n + idx}"
        else:
            if kind == "upsamplers":
                inner = 2 if layout.up_has_attention[block] else 1
                return f"output_blocks.{block * n + n - 1}.{inner}.conv"
            slot = f"output_blocks.{block * n + idx}"
        if kind == "resnets":
            return f"{slot}.0.{_resnet_to_sgm(rest, module)}"
        if kind == "attentions":
            return f"{slot}.1.{'.'.join(rest)}"
    if head == "mid_block" and len(parts) >= 3:
        kind, idx, rest = parts[1], int(parts[2]), parts[3:]
        if kind == "attentions":
            return f"middle_block.1.{'.'.join(rest)}"
        if kind == "resnets":
            return f"middle_block.{2 * idx}.{_resnet_to_sgm(rest, module)}"
    if head in ("down_blocks", "up_blocks", "mid_block"):
        raise UnmappedModuleError(f"UNet module '{module}' has no SGM name")
    return module


def _resnet_to_sgm(rest: list[str], module: str) -> str:
    name = ".".join(rest)
    if name not in _RESNET_TO_SGM:
        raise UnmappedModuleError(f"UNet module '{module}' has no SGM name (kohya LoRA covers conv1, conv2, "
                        f"conv_shortcut, time_emb_proj in resnets)")
    return _RESNET_TO_SGM[name]


# ---- kohya -> diffusers ---------------------------------------------------------------------
def kohya_to_diffusers(lora_name: str, layout: SgmLayout = SDXL_LAYOUT) -> tuple[str, str]:
    """`lora_unet_input_blocks_4_1_proj_in` -> `("unet", "down_blocks.1.attentions.0.proj_in")`.

    Both kohya UNet spellings are read (SGM names for SDXL-class, diffusers names for SD1.5 and
    for SDXL files from trainers that write diffusers names); text encoder paths keep `text_model.`.
    """
    if lora_name.startswith(UNET_PREFIX):
        dotted = underscores_to_dots(lora_name[len(UNET_PREFIX):])
        return "unet", sgm_to_unet(dotted, layout) if is_sgm_name(dotted) else dotted
    for prefix, component in _TE_COMPONENT.items():
        if lora_name.startswith(prefix):
            return component, underscores_to_dots(lora_name[len(prefix):])
    expected = "/".join([UNET_PREFIX, *_TE_COMPONENT])
    raise UnmappedModuleError(f"'{lora_name}' is not a kohya LoRA module name (expected {expected})")


def is_sgm_name(dotted: str) -> bool:
    return dotted.split(".")[0] in ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb") \
        or dotted == "out.2"


def underscores_to_dots(name: str) -> str:
    """`input_blocks_4_1_transformer_blocks_0_attn1_to_out_0` -> `input_blocks.4.1.transformer_blocks.0.attn1.to_out.0`."""
    tokens = name.split("_")
    out: list[str] = []
    i = 0
    while i < len(tokens):
        for width in range(min(_MAX_PARTS, len(tokens) - i), 1, -1):
            compound = _COMPOUND_TOKENS.get(tuple(tokens[i:i + width]))
            if compound:
                out.append(compound)
                i += width
                break
        else:
            out.append(tokens[i])
            i += 1
    return ".".join(out)


def sgm_to_unet(dotted: str, layout: SgmLayout = SDXL_LAYOUT) -> str:
    """SGM UNet path -> diffusers path; the inverse of `unet_to_sgm`."""
    if dotted in _SGM_TO_TOP:
        return _SGM_TO_TOP[dotted]
    parts = dotted.split(".")
    n = layout.layers_per_block + 1
    try:
        head, slot = parts[0], int(parts[1])
        if head == "middle_block":  # middle_block.{0 resnet, 1 attention, 2 resnet}.<layer>
            if slot == 1:
                return f"mid_block.attentions.0.{'.'.join(parts[2:])}"
            if slot in (0, 2):
                return f"mid_block.resnets.{slot // 2}.{_sgm_to_resnet(parts[2:], dotted)}"
        inner, rest = int(parts[2]), parts[3:]
    except (IndexError, ValueError):
        raise UnmappedModuleError(f"'{dotted}' is not an SGM UNet module path") from None
    if head == "input_blocks":
        block, idx = (slot - 1) // n, (slot - 1) % n
        if idx == n - 1:  # the level's downsampler
            if inner == 0 and rest == ["op"]:
                return f"down_blocks.{block}.downsamplers.0.conv"
        elif inner == 0:
            return f"down_blocks.{block}.resnets.{idx}.{_sgm_to_resnet(rest, dotted)}"
        elif inner == 1:
            return f"down_blocks.{block}.attentions.{idx}.{'.'.join(rest)}"
    elif head == "output_blocks":
        block, idx = slot // n, slot % n
        if inner == 0:
            return f"up_blocks.{block}.resnets.{idx}.{_sgm_to_resnet(rest, dotted)}"
        has_attention = block < len(layout.up_has_attention) and layout.up_has_attention[block]
        if inner == 1 and has_attention:
            return f"up_blocks.{block}.attentions.{idx}.{'.'.join(rest)}"
        if rest == ["conv"] and inner == (2 if has_attention else 1):
            return f"up_blocks.{block}.upsamplers.0.conv"
    raise UnmappedModuleError(f"'{dotted}' is not an SGM UNet module path this layout has")


def _sgm_to_resnet(rest: list[str], dotted: str) -> str:
    name = ".".join(rest)
    if name not in _SGM_TO_RESNET:
        raise UnmappedModuleError(f"'{dotted}' is not an SGM resnet layer LoRA can target")
    return _SGM_TO_RESNET[name]
