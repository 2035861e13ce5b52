"""Model families by name. `get_family("kolors")` returns the adapter class."""
from __future__ import annotations

from loraflow.errors import ConfigError
from loraflow.models.families.base import FamilyDefaults, ModelFamily, PromptEmbeds
from loraflow.models.families.kolors import Kolors
from loraflow.models.families.sd15 import SD15
from loraflow.models.families.sdxl import SDXL

FAMILIES: dict[str, type[ModelFamily]] = {f.name: f for f in (Kolors, SDXL, SD15)}


def get_family(name: str) -> type[ModelFamily]:
    try:
        return FAMILIES[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model family '{name}'; choose one of: {', '.join(FAMILIES)}") from None


__all__ = ["FAMILIES", "FamilyDefaults", "ModelFamily", "PromptEmbeds", "get_family"]
