"""Read LoRA files of any layout we know, check they fit a model family, convert between layouts.

    lora = read_lora("style.safetensors")                  # kohya, diffusers or peft layout
    sd, alphas = to_diffusers_state_dict(lora, "sdxl")     # diffusers keys + per-module alphas
    convert_lora("in.safetensors", "out.safetensors", to="kohya", family="sdxl")

Putting LoRAs into a pipeline is `loraflow.models.lora.apply` (`apply_loras`, `remove_loras`),
which builds on this module (never the other way round).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.errors import InputError, ModelLoadError
from loraflow.models.families import FAMILIES, family_title, get_family
from loraflow.models.lora import formats, lycoris
from loraflow.models.lora.formats import detect_lora_format  # noqa: F401  (part of this module's API)
from loraflow.models.lora.kohya_keys import is_sgm_name, underscores_to_dots
from loraflow.models.lora.metadata import family_from_metadata
from loraflow.models.pickle_files import PICKLE_SUFFIXES, load_pickle_state_dict
from loraflow.atomic import atomic_save_safetensors


@dataclass
class LoraFile:
    """One LoRA file, as stored and in the neutral form (`formats` module docstring)."""

    state_dict: dict[str, Any]  # tensors exactly as in the file
    metadata: dict[str, str]  # safetensors metadata (`ss_*`, `modelspec.*`, `lora_adapter_metadata`, ...)
    format: str  # "kohya" | "diffusers" | "peft" | "lycoris" (LoHa/LoKr/DoRA/diff/Tucker LoCon: see `adapters`)
    rank: int  # most common rank over modules
    alpha: float  # most common alpha (kohya meaning: scale = alpha / rank)
    path: Path | None = None
    neutral: dict[str, Any] = field(default_factory=dict, repr=False)  # diffusers-layout tensors
    alphas: dict[str, float] = field(default_factory=dict, repr=False)  # `<component>.<module>` -> alpha
    adapters: dict[str, Any] = field(default_factory=dict, repr=False)  # LyCORIS: target -> lycoris.Adapter

    @property
    def name(self) -> str:
        return str(self.path) if self.path else "LoRA"

    def modules(self) -> dict[str, tuple[int, float]]:
        """`<component>.<module>` -> (rank, alpha); rank 0 for full-rank LyCORIS modules (diff, whole LoKr)."""
        if self.adapters:
            return {t: (a.rank or 0, self.alphas[t]) for t, a in self.adapters.items()}
        return {t: (r, self.alphas[t]) for t, r in formats.module_ranks(self.neutral).items()}

    def components(self) -> list[str]:
        return sorted({t.split(".")[0] for t in self.alphas}, key=formats.COMPONENTS.index)


def read_lora(path: str | os.PathLike, *, allow_pickle: bool = False) -> LoraFile:
    """Read a `.safetensors` LoRA (pickled `.pt/.bin/.ckpt` only with `allow_pickle=True`, and
    then with `torch.load(weights_only=True)`)."""
    state_dict, metadata = read_state_dict(path, allow_pickle=allow_pickle)
    return lora_from_state_dict(state_dict, metadata, path)


def read_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """(tensors, safetensors metadata) of a LoRA file, as stored; the same checks as `read_lora`."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"LoRA file not found: {path}")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        if not allow_pickle:
            raise ModelLoadError(f"{path}: refusing to unpickle a {path.suffix} file; convert it to .safetensors "
                                 "or allow pickle explicitly (allow_pickle=True)")
        state_dict, metadata = load_pickle_state_dict(path), {}
    elif path.suffix.lower() == ".safetensors":
        state_dict, metadata = _read_safetensors(path)
    else:
        raise ModelLoadError(f"{path}: not a LoRA file; expected .safetensors")
    return state_dict, metadata


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a valid safetensors file: {str(e).splitlines()[0]}") from None


def lora_from_state_dict(state_dict: dict[str, Any], metadata: dict[str, str] | None = None,
                         path: str | os.PathLike | None = None) -> LoraFile:
    """A `LoraFile` from tensors already in memory (e.g. a file read elsewhere)."""
    metadata = dict(metadata or {})
    source = str(path) if path else "LoRA"
    fmt = formats.detect_lora_format(state_dict)
    adapter_meta = _adapter_metadata(metadata, source)
    adapters: dict[str, Any] = {}
    if fmt == "lycoris":
        alphas, adapters = lycoris.read_adapters(state_dict, adapter_meta, source)
        neutral = {}
    else:
        converted = formats.to_neutral(fmt, state_dict, adapter_meta, source)
        if converted is None:
            raise InputError(f"{source}: not a LoRA state dict (keys such as {', '.join(list(state_dict)[:3])}); "
                             "expected kohya (lora_unet_...), diffusers (unet....lora_A.weight) or peft keys")
        neutral, alphas = converted
    if not alphas:
        raise InputError(f"{source}: holds no LoRA modules")
    ranks = formats.module_ranks(neutral) if not adapters else {t: a.rank or 0 for t, a in adapters.items()}
    return LoraFile(state_dict, metadata, fmt, formats.most_common(ranks.values()),
                    formats.most_common(alphas.values()), Path(path) if path else None, neutral, alphas, adapters)


def _adapter_metadata(metadata: dict[str, str], source: str) -> dict[str, Any] | None:
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise InputError(f"{source}: metadata 'lora_adapter_metadata' is not valid JSON") from None


# ---- family -----------------------------------------------------------------------------------
def guess_family(lora: LoraFile) -> str | None:
    """The family the file appears to be for: from its metadata, else from key names, by each
    family's rules. A guess from key names names the family that owns the UNet layout (SDXL for
    SDXL-class, which includes Kolors: see `fits_family`); None when nothing tells."""
    stated = family_from_metadata(lora.metadata)
    if stated:
        return stated
    owners = [fam for fam in FAMILIES.values() if fam.unet_like is None]  # Kolors' keys are SDXL's
    if lora.format == "kohya" and any(
        k.startswith("lora_unet_") and is_sgm_name(underscores_to_dots(k.split(".")[0][len("lora_unet_"):]))
        for k in lora.state_dict
    ):
        return next((fam.name for fam in owners if fam.kohya_sgm_unet), None)
    modules = [t[len("unet."):] for t in lora.alphas if t.startswith("unet.")]
    components = lora.components()
    return next((fam.name for fam in owners if fam.matches_lora_modules(components, modules)), None)


def fits_family(apparent: str | None, family: str, stated: bool = False) -> bool:
    """Whether a LoRA that appears to be for `apparent` may go into `family`: the same family, or,
    when only key names told (nothing `stated` in metadata), a family sharing that UNet layout."""
    return apparent is None or apparent == family or (not stated and apparent == get_family(family).unet_like)


def check_family(lora: LoraFile, family: str) -> None:
    """One-line error when the file is for another family (or has weights the family cannot take)."""
    apparent = guess_family(lora)
    stated = family_from_metadata(lora.metadata) is not None
    if not fits_family(apparent, family, stated):
        raise InputError(f"{lora.name} appears to be a {family_title(apparent)} LoRA; "
                         f"it cannot be used with {family_title(family)}")
    fam = get_family(family)
    foreign = [c for c in lora.components() if c != "unet" and c not in fam.lora_text_encoders]
    if foreign:
        raise InputError(f"{lora.name} has {foreign[0]} LoRA weights, but {fam.text_encoder_note}")


def to_diffusers_state_dict(lora: LoraFile, family: str) -> tuple[dict[str, Any], dict[str, float]]:
    """(diffusers-layout state dict `unet.<module>.lora_A.weight` ..., alphas `unet.<module>` -> alpha).

    The scale each module must get is alpha / rank (rank = its lora_A.shape[0]).
    """
    check_family(lora, family)
    return dict(lora.neutral), dict(lora.alphas)


# ---- conversion -------------------------------------------------------------------------------
def convert_lora(src: str | os.PathLike, dst: str | os.PathLike, *, to: str, family: str | None = None,
                 allow_pickle: bool = False) -> Path:
    """Rewrite a LoRA in another layout, tensors and alphas unchanged; metadata is kept.

    `family` is needed for kohya output (SGM names for SDXL/Kolors); by default it is guessed
    from the file.
    """
    if to not in formats.FORMATS:
        raise InputError(f"unknown LoRA format '{to}'; choose one of: {', '.join(formats.FORMATS)}")
    lora = read_lora(src, allow_pickle=allow_pickle)
    if lora.adapters:  # LoHa/LoKr/DoRA/diff have no diffusers or peft layout to go to
        raise InputError(f"{lora.name}: a LyCORIS file ({', '.join(sorted({a.kind for a in lora.adapters.values()}))}) "
                         "is loaded as it is; convert rewrites plain LoRA files")
    family = family or guess_family(lora)
    if to == "kohya" and family not in FAMILIES:
        raise InputError(f"{lora.name}: cannot tell which model family it is for; pass --family {'|'.join(FAMILIES)}")
    if family:
        check_family(lora, family)
    metadata = {k: v for k, v in lora.metadata.items() if k not in ("lora_adapter_metadata", "format")}
    if to == "kohya":
        tensors = formats.neutral_to_kohya(lora.neutral, lora.alphas, family)
    else:
        convert = formats.neutral_to_diffusers if to == "diffusers" else formats.neutral_to_peft
        tensors, adapter_meta = convert(lora.neutral, lora.alphas)
        metadata["format"] = "pt"
        metadata["lora_adapter_metadata"] = json.dumps(adapter_meta, indent=2, sort_keys=True)
    if "sshs_model_hash" in metadata:  # the tensor bytes changed with the key names
        from loraflow.models.lora.metadata import sshs_hashes

        metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = sshs_hashes(tensors, metadata)
    return atomic_save_safetensors(tensors, dst, metadata)
