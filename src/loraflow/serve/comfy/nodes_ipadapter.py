"""IP-Adapter nodes with ComfyUI_IPAdapter_plus's names and inputs (cubiq/ComfyUI_IPAdapter_plus
`IPAdapterPlus.py`: IPAdapterModelLoader, IPAdapter, IPAdapterAdvanced), so its API workflows run here.

The image encoder is found beside the adapter (models/ip_adapter.py); IPAdapterAdvanced's optional
`clip_vision` (ComfyUI's core CLIPVisionLoader, a transformers folder under models_dir/clip_vision)
replaces it. What
diffusers' IP-Adapter attention cannot do (a start/end window, weight types other than the standard
one, other embedding combinations or scalings) is an error on the node, never silently different.
"""
from __future__ import annotations

from loraflow.serve.comfy.node_base import COMBO, FLOAT, LINK, Node
from loraflow.serve.comfy.values import CLIPVisionRef, IPAdapterRef, IPAdapterUse, NodeError

# ComfyUI_IPAdapter_plus's choices, listed so its workflows validate; only the first of each is supported
WEIGHT_TYPES = ("linear", "ease in", "ease out", "ease in-out", "reverse in-out", "weak input", "weak output",
                "weak middle", "strong middle", "style transfer", "composition", "strong style transfer",
                "style and composition", "style transfer precise", "composition precise")
SIMPLE_WEIGHT_TYPES = ("standard", "prompt is more important", "style transfer")
COMBINE_EMBEDS = ("concat", "add", "subtract", "average", "norm average")
EMBEDS_SCALING = ("V only", "K+V", "K+V w/ C penalty", "K+mean(V) w/ C penalty")


def ip_adapter_names(paths) -> list[str]:
    """Folders and .safetensors files directly under models_dir/ipadapter."""
    root = paths.ipadapters
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")
                  and (p.is_dir() or p.suffix.lower() == ".safetensors"))


def clip_vision_names(paths) -> list[str]:
    root = paths.clip_visions
    return sorted(p.name for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []


class CLIPVisionLoader(Node):
    """Loads a CLIP vision encoder (ComfyUI core `CLIPVisionLoader`) for IPAdapterAdvanced."""

    INPUTS = {"clip_name": COMBO(clip_vision_names)}
    OUTPUTS = ("CLIP_VISION",)
    FILE_INPUTS = {"clip_name": "CLIP vision"}

    def run(self, ctx, node_id, clip_name):
        return (CLIPVisionRef(str(ctx.paths.clip_vision(clip_name))),)  # weights load when sampled


class IPAdapterModelLoader(Node):
    """Loads an IP-Adapter (a folder in its hub layout, or a file with its image encoder beside it)."""

    CATEGORY = "ipadapter/loaders"
    INPUTS = {"ipadapter_file": COMBO(ip_adapter_names)}
    OUTPUTS = ("IPADAPTER",)
    FILE_INPUTS = {"ipadapter_file": "IP-Adapter"}

    def run(self, ctx, node_id, ipadapter_file):
        return (IPAdapterRef(str(ctx.paths.ip_adapter(ipadapter_file))),)  # weights load when sampled


def _use(node_id, model, ipadapter, image, weight, start_at, end_at, attn_mask, clip_vision=None):
    if (start_at, end_at) != (0.0, 1.0):
        raise NodeError(f"start_at/end_at {start_at:g}..{end_at:g}: only the whole run (0..1) is supported here")
    if weight == 0:
        return model  # as a LoRA at 0: the base model, byte for byte
    return model.with_reference(IPAdapterUse(ipadapter, image, weight, attn_mask, node_id, clip_vision))


class IPAdapter(Node):
    """Steers MODEL with reference images through an IP-Adapter (ComfyUI_IPAdapter_plus `IPAdapter`)."""

    CATEGORY = "ipadapter"
    INPUTS = {"model": LINK("MODEL"), "ipadapter": LINK("IPADAPTER"), "image": LINK("IMAGE"),
              "weight": FLOAT(1.0, 0.0, 3.0, 0.05), "start_at": FLOAT(0.0, 0.0, 1.0, 0.001),
              "end_at": FLOAT(1.0, 0.0, 1.0, 0.001), "weight_type": COMBO(SIMPLE_WEIGHT_TYPES),
              "attn_mask": LINK("MASK", optional=True)}
    OUTPUTS = ("MODEL",)

    def run(self, ctx, node_id, model, ipadapter, image, weight, start_at, end_at, weight_type, attn_mask=None):
        if weight_type != SIMPLE_WEIGHT_TYPES[0]:
            raise NodeError(f"weight_type {weight_type!r}: only 'standard' is supported here")
        return (_use(node_id, model, ipadapter, image, weight, start_at, end_at, attn_mask),)


class IPAdapterAdvanced(Node):
    """IPAdapter with ComfyUI_IPAdapter_plus's advanced inputs (`IPAdapterAdvanced`)."""

    CATEGORY = "ipadapter"
    INPUTS = {"model": LINK("MODEL"), "ipadapter": LINK("IPADAPTER"), "image": LINK("IMAGE"),
              "weight": FLOAT(1.0, 0.0, 5.0, 0.05), "weight_type": COMBO(WEIGHT_TYPES),
              "combine_embeds": COMBO(COMBINE_EMBEDS), "start_at": FLOAT(0.0, 0.0, 1.0, 0.001),
              "end_at": FLOAT(1.0, 0.0, 1.0, 0.001), "embeds_scaling": COMBO(EMBEDS_SCALING),
              "image_negative": LINK("IMAGE", optional=True), "attn_mask": LINK("MASK", optional=True),
              "clip_vision": LINK("CLIP_VISION", optional=True)}
    OUTPUTS = ("MODEL",)

    def run(self, ctx, node_id, model, ipadapter, image, weight, weight_type, combine_embeds, start_at, end_at,
            embeds_scaling, image_negative=None, attn_mask=None, clip_vision=None):
        chosen = {"weight_type": weight_type, "combine_embeds": combine_embeds, "embeds_scaling": embeds_scaling}
        for (name, value), default in zip(chosen.items(), (WEIGHT_TYPES[0], COMBINE_EMBEDS[0], EMBEDS_SCALING[0])):
            if value != default:
                raise NodeError(f"{name} {value!r}: only {default!r} is supported here")
        if image_negative is not None:
            raise NodeError("image_negative: not supported here (the unconditional side uses diffusers' own)")
        return (_use(node_id, model, ipadapter, image, weight, start_at, end_at, attn_mask, clip_vision),)


IPADAPTER_NODES = (IPAdapterModelLoader, CLIPVisionLoader, IPAdapter, IPAdapterAdvanced)
