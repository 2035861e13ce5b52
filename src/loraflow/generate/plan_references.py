"""The IP-Adapter of a generation plan (`--reference` images), from its files without reading a weight:

    planned = plan_ip_adapter(config, family, dtype)  # None: no reference at a nonzero scale
    planned.tensors        # the adapter's tensors on the meta device (sizes from the file's header)
    planned.image_encoder  # its CLIP vision encoder, built on the meta device from config.json
    planned.encode()       # the references through the encoder, as diffusers' `encode_image` runs them

The session loads both in the UNet's dtype (models/ip_adapter.py `load_ip_adapter_files`; diffusers
casts the adapter into the UNet's), so they are planned in the run's dtype.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import ModelLoadError
from loraflow.models.ip_adapter import (
    find_image_encoder, image_encoder_candidates, is_image_encoder_folder, locate_ip_adapter)
from loraflow.models.pickle_files import PICKLE_SUFFIXES

NOT_PLANNED = "the IP-Adapter and its image encoder are not in this plan (add their file sizes)"


@dataclass
class PlannedIPAdapter:
    tensors: list  # meta tensors: the adapter's image_proj.* and ip_adapter.* (or its .bin's bytes)
    image_encoder: Any  # transformers CLIPVisionModelWithProjection on the meta device
    output: str  # what the adapter reads: "image_embeds" (plain) or "hidden_states" (Plus)
    references: int  # images encoded per prompt
    guidance: bool
    notes: list[str] = field(default_factory=list)

    @property
    def adapter_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    def encode(self):
        """One reference batch through the encoder (diffusers' `encode_image`): the Plus adapter reads the
        penultimate hidden states and, under guidance, encodes a zero image batch as well."""
        import torch

        size = self.image_encoder.config.image_size  # 224 (ViT-H, bigG) or 336 (Kolors' ViT-L/14-336)
        dtype = next(self.image_encoder.parameters()).dtype
        pixels = torch.zeros(self.references, 3, size, size, dtype=dtype, device="meta")
        with torch.no_grad():
            if self.output == "image_embeds":
                return self.image_encoder(pixels).image_embeds
            passes = 2 if self.guidance else 1
            return [self.image_encoder(pixels, output_hidden_states=True).hidden_states[-2] for _ in range(passes)]


def plan_ip_adapter(config, family, dtype, guidance: bool) -> PlannedIPAdapter | str | None:
    """The run's adapter on meta; None without references at a nonzero scale; NOT_PLANNED (a note) when the
    adapter is not on this machine (planning without the weights). Build it inside the accountant's
    "weights" category: the tensors are allocated on meta here."""
    if not any(r.scale for r in config.reference):  # scale 0 everywhere: the adapter is not attached
        return None
    if not config.ip_adapter or not Path(config.ip_adapter).expanduser().exists():
        return NOT_PLANNED
    files = locate_ip_adapter(config.ip_adapter, family)
    notes, shapes = [], {}
    if files.weights.suffix in PICKLE_SUFFIXES:
        # shapes are inside the pickle, which the plan does not open: its size stands in (stored dtype)
        tensors = [_meta_bytes(files.weights.stat().st_size)]
        encoder_dir = _first_encoder(files, family)
        notes.append(f"IP-Adapter {files.weights.name} is pickled: counted at its file size, and its image "
                     "encoder's width is not checked against it")
    else:
        shapes = _header_shapes(files.weights)
        tensors = [_meta(shape, dtype) for shape in shapes.values()]
        encoder_dir = find_image_encoder(files, family, _shape_state(shapes))
    # a Plus adapter's Resampler reads hidden states (`proj_in`); the plain one the projected embedding
    output = "hidden_states" if "image_proj.proj_in.weight" in shapes else "image_embeds"
    encoder = _meta_encoder(encoder_dir, dtype)
    return PlannedIPAdapter(tensors, encoder, output, len(config.reference), guidance, notes)


def _header_shapes(path: Path) -> dict[str, list[int]]:
    """{key: shape} of a .safetensors file, from its header (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # a truncated or foreign file: safetensors' errors have no common base
        raise ModelLoadError(f"{path}: not a readable .safetensors file ({e.__class__.__name__})") from None


def _shape_state(shapes: dict) -> dict:
    """{"image_proj": {...}, "ip_adapter": {...}} of meta tensors, as find_image_encoder reads widths."""
    import torch

    state = {"image_proj": {}, "ip_adapter": {}}
    for key, shape in shapes.items():
        head, _, rest = key.partition(".")
        if head in state:
            state[head][rest] = torch.empty(shape, device="meta")
    return state


def _first_encoder(files, family) -> Path:
    for folder in image_encoder_candidates(files, family):
        if is_image_encoder_folder(folder):
            return folder
    raise ModelLoadError(f"IP-Adapter {files.weights.name}: no image encoder beside it (config.json and weights)")


def _meta_encoder(folder: Path, dtype):
    """CLIPVisionModelWithProjection of `folder`'s config.json on the meta device (no weight is read)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        # a whole CLIP model's config holds the vision tower's under vision_config (as from_pretrained reads it)
        config = CLIPVisionConfig.from_dict(raw.get("vision_config", raw))
    except (OSError, ValueError, TypeError) as e:
        raise ModelLoadError(f"{folder / 'config.json'}: not a readable config.json ({e.__class__.__name__})") from None
    with torch.device("meta"):
        encoder = CLIPVisionModelWithProjection(config)
    return encoder.requires_grad_(False).to(dtype).eval()


def _meta(shape, dtype):
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def _meta_bytes(n: int):
    import torch

    return torch.empty(n, dtype=torch.uint8, device="meta")
