"""Training metadata written into LoRA files: kohya `ss_*`, `sshs_*` hashes and SAI `modelspec.*`.

Key names and value spellings follow kohya sd-scripts (`train_network.py`, `library/train_util.py`,
`library/sai_model_spec.py`), which A1111 ("Lora" extra network metadata, `ss_base_model_version`
for SDXL detection), ComfyUI and Civitai read. safetensors metadata is `dict[str, str]`.
"""
from __future__ import annotations

import datetime
import hashlib
import json
from io import BytesIO
from typing import Any

from loraflow.models.families import RECOGNISED, get_family

MODELSPEC_VERSION = "1.0.0"


def family_from_metadata(metadata: dict[str, str]) -> str | None:
    """The family a file says it is for (`ss_base_model_version` or `modelspec.architecture`), a
    recognised-only one included (SD 2.x), so errors can name it."""
    return next((fam.name for fam in RECOGNISED if fam.matches_metadata(metadata)), None)


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def training_metadata(
    *,
    family: str,
    rank: int,
    alpha: float,
    output_name: str,
    resolution: int | tuple[int, int] | None = None,
    tag_frequency: dict[str, dict[str, int]] | None = None,
    has_text_encoder: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, str]:
    """kohya `ss_*` + `modelspec.*` metadata. `extra` (training parameters, `ss_*` or not) is passed
    through as text and may override the generated values."""
    fam = get_family(family)
    default = (fam.defaults.width, fam.defaults.height)
    width, height = (resolution, resolution) if isinstance(resolution, int) else (resolution or default)
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    meta: dict[str, Any] = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": float(alpha),
        "ss_base_model_version": fam.ss_base_model_version,
        "ss_v2": "False",
        "ss_output_name": output_name,
        "ss_resolution": f"({width}, {height})",  # str of a tuple, as sd-scripts writes it
        "ss_network_train_unet_only": str(not has_text_encoder),
        "ss_training_finished_at": str(now.timestamp()),
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": fam.modelspec_architecture,
        "modelspec.implementation": fam.modelspec_implementation,
        "modelspec.title": output_name,
        "modelspec.resolution": f"{width}x{height}",
        "modelspec.date": now.isoformat(),
        "modelspec.prediction_type": fam.schedule["prediction_type"],
    }
    if tag_frequency is not None:
        meta["ss_tag_frequency"] = tag_frequency
    meta.update(extra or {})
    return {k: _text(v) for k, v in meta.items()}


def sshs_hashes(tensors: dict[str, Any], metadata: dict[str, str]) -> tuple[str, str]:
    """(`sshs_model_hash`, `sshs_legacy_hash`) as sd-scripts precomputes them for sd-webui-additional-networks.

    The file is serialised in memory with only the `ss_*` metadata (so editing other metadata
    keeps the hash); the model hash is the SHA-256 of the tensor bytes after the header (what
    A1111's "Lora hashes" shows, 12 digits), the legacy hash 8 digits of the SHA-256 of 64 KiB at
    1 MiB (`library/train_util.py::precalculate_safetensors_hashes`).
    """
    from safetensors.torch import save

    data = save(tensors, {k: v for k, v in metadata.items() if k.startswith("ss_")})
    buf = BytesIO(data)
    header_len = int.from_bytes(buf.read(8), "little")
    model_hash = hashlib.sha256(data[8 + header_len:]).hexdigest()
    legacy_hash = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    return model_hash, legacy_hash
