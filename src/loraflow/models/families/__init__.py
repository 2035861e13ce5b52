"""Model families: everything loraflow knows that differs between Kolors, SDXL and SD1.5.

`get_family("kolors")` returns the adapter class; the rest of loraflow asks it (or this registry)
and never spells a family's name. A test (tests/models/test_families_registry.py) keeps it so.

Adding a family
---------------
1. One new file here, `families/<name>.py`, with a `ModelFamily` subclass (base.py documents every
   attribute; defaults fit families that do not have the feature). It says:
   - pipelines: the diffusers classes (text2img/img2img/inpaint/ControlNet), `pipeline_extras`;
   - detection: `matches_folder` / `matches_unet_config` (diffusers folders),
     `checkpoint_markers`, `cross_attention_dim`, `checkpoint_refusal` (single-file checkpoints);
   - loading: `folder_components` for what `from_pretrained` cannot load (custom code),
     `single_file_layout` + `single_file_tokenizers` for A1111-style single files;
   - conditioning: `encode_prompts`, `uses_time_ids`, `call_kwargs`; `schedule`, `defaults`;
   - latents: `vae_scaling_factor`, `vae_force_upcast`, `vae_config_folder`, `latent_rgb_factors`;
   - LoRA files: `kohya_sgm_unet`, `lora_text_encoders` (kohya prefixes; the trainable encoders),
     `ss_base_model_version` / `modelspec_*`, `metadata_prefixes`, `lora_components`,
     `lora_module_pattern`, `unet_like`;
   - tests: `tiny_unet` and `tiny_text_components` (the in-process `tiny:<name>` model).
2. Its configs, when it loads single-file checkpoints: `models/configs/<name>/` (a diffusers
   folder without weights: model_index.json, */config.json, tokenizer configs).
3. Its class in `_ORDER` below. The order is the order of detection: a family whose files also
   look like another's (Kolors folders declare the SDXL pipeline) comes first.
A family loraflow should recognise but cannot run (SD 2.x) sets `supported = False` and goes in
`_UNSUPPORTED`: errors then name it, and it is no `--family` choice.
"""
from __future__ import annotations

from typing import Literal

from loraflow.errors import ConfigError
from loraflow.models.families.base import FamilyDefaults, ModelFamily, PromptEmbeds
from loraflow.models.families.kolors import Kolors
from loraflow.models.families.sd2 import SD2
from loraflow.models.families.sd15 import SD15
from loraflow.models.families.sdxl import SDXL

_ORDER: tuple[type[ModelFamily], ...] = (Kolors, SDXL, SD15)
_UNSUPPORTED: tuple[type[ModelFamily], ...] = (SD2,)

FAMILIES: dict[str, type[ModelFamily]] = {f.name: f for f in _ORDER}
# Supported and recognised-only families, in detection order.
RECOGNISED: tuple[type[ModelFamily], ...] = _ORDER + _UNSUPPORTED
TINY_MODELS: tuple[str, ...] = tuple(f"tiny:{name}" for name in FAMILIES)  # built-in in-process models
# The type of every `family` option: pydantic accepts only registered names (its one-line error
# lists them) and `Options.add_arguments` offers them as argparse choices.
FamilyName = Literal[tuple(FAMILIES)]  # type: ignore[valid-type]


def get_family(name: str) -> type[ModelFamily]:
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model family '{name}'; choose one of: {', '.join(FAMILIES)}") from None


def family_title(name: str) -> str:
    """"SDXL" for "sdxl"; recognised-only families too; an unknown name as given."""
    return next((f.title for f in RECOGNISED if f.name == name), name)


__all__ = ["FAMILIES", "RECOGNISED", "TINY_MODELS", "FamilyDefaults", "FamilyName", "ModelFamily",
           "PromptEmbeds", "family_title", "get_family"]
