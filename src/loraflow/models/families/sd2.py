"""Stable Diffusion 2.x: recognised, not supported. Known here so that a 2.x checkpoint or LoRA
gets an error saying what it is, instead of failing somewhere inside the SD1.5 loader."""
from __future__ import annotations

from loraflow.models.families.base import ModelFamily


class SD2(ModelFamily):
    name = "sd2"
    title = "SD2.x"
    supported = False
    cross_attention_dim = 1024  # OpenCLIP ViT-H/14 hidden states
    checkpoint_markers = ("cond_stage_model.model.",)  # OpenCLIP ViT-H/14 in the LDM checkpoint
    metadata_prefixes = ("sd_v2", "stable-diffusion-v2")

    @classmethod
    def matches_metadata(cls, metadata):
        return super().matches_metadata(metadata) or metadata.get("ss_v2") == "True"
