"""LoRA state dicts in the three layouts we read and write, and conversions through one neutral form.

Layouts (`LoraFormat`):

- `kohya`: `lora_unet_<module>.lora_down.weight` / `.lora_up.weight` / `.alpha` (sd-scripts
  `networks/lora.py`; what A1111, ComfyUI and Civitai use). Scale = alpha / rank per module.
- `diffusers`: `unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.`/`text_encoder_2.`
  likewise (`pipe.save_lora_weights`). Alpha lives in the safetensors metadata key
  `lora_adapter_metadata`: JSON of LoraConfig fields prefixed with the component
  (`{"unet.r": 4, "unet.lora_alpha": 4, ...}`, diffusers `loaders/lora_base.py::_save_lora_weights`);
  without it diffusers assumes alpha = rank.
- `peft`: one model's `<module>.lora_A.weight` with no component prefix (`unet.save_lora_adapter`,
  `peft.get_peft_model_state_dict(unet)`); its metadata holds the unprefixed LoraConfig fields.

The neutral form is a diffusers-layout state dict plus `alphas`, a map from
`<component>.<module>` to its kohya-style alpha (scale = alpha / rank), so every conversion is
exact: down = lora_A, up = lora_B, tensors untouched.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Literal

from loraflow.errors import InputError
from loraflow.models.lora import kohya_keys

LoraFormat = Literal["kohya", "diffusers", "peft"]
FORMATS: tuple[str, ...] = ("kohya", "diffusers", "peft")
COMPONENTS = ("unet", "text_encoder", "text_encoder_2")
_KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
# What sd-scripts' `networks/lora.py` writes per module; a kohya-named file with any other key
# (lora_mid, hada_*, lokr_*, dora_scale, diff, ...) holds LyCORIS modules, as ComfyUI's
# `comfy/weight_adapter` reads them. peft/diffusers DoRA files carry `lora_magnitude_vector`.
_PLAIN_KOHYA = frozenset({"lora_up.weight", "lora_down.weight", "alpha"})


def detect_lora_format(state_dict: dict[str, Any]) -> str:
    """'kohya' | 'diffusers' | 'peft', 'lycoris' (LoCon/LoHa/LoKr/DoRA/full, read by `lycoris.py`),
    or 'unknown'."""
    keys = list(state_dict)
    if not keys:
        return "unknown"
    if all(k.startswith(_KOHYA_PREFIXES) for k in keys):
        return "lycoris" if any(k.partition(".")[2] not in _PLAIN_KOHYA for k in keys) else "kohya"
    if any(".lora_magnitude_vector" in k for k in keys):
        return "lycoris"
    lora_keys = [k for k in keys if ".lora_A." in k or ".lora_B." in k or ".lora.down." in k
                 or ".lora.up." in k or "_lora.down." in k or "_lora.up." in k or ".lora_linear_layer." in k]
    if len(lora_keys) != len(keys):
        return "unknown"
    if all(k.split(".")[0] in COMPONENTS for k in keys):
        return "diffusers"
    return "peft"


# ---- neutral form helpers -----------------------------------------------------------------
def split_key(key: str) -> tuple[str, str]:
    """`unet.down_blocks.0.attentions.0.proj_in.lora_A.weight` -> (`unet.down_blocks...proj_in`, `lora_A`)."""
    head, _, tail = key.rpartition(".lora_")
    return head, "lora_" + tail.split(".")[0]


def module_ranks(state_dict: dict[str, Any]) -> dict[str, int]:
    """`<component>.<module>` -> rank, from the lora_A (down) shapes."""
    return {split_key(k)[0]: int(v.shape[0]) for k, v in state_dict.items() if k.endswith(".lora_A.weight")}


def most_common(values) -> Any:
    values = list(values)
    return Counter(values).most_common(1)[0][0] if values else None


# ---- kohya ----------------------------------------------------------------------------------
def kohya_to_neutral(state_dict: dict[str, Any], source: str = "LoRA") -> tuple[dict[str, Any], dict[str, float]]:
    """kohya keys -> (diffusers-layout state dict, alphas). A key left over is an error, never dropped."""
    out: dict[str, Any] = {}
    alphas: dict[str, float] = {}
    used: set[str] = set()
    for key in state_dict:
        if not key.endswith(".lora_down.weight"):
            continue
        name = key[: -len(".lora_down.weight")]
        up_key = f"{name}.lora_up.weight"
        if up_key not in state_dict:
            raise InputError(f"{source}: '{key}' has no matching '{up_key}'")
        try:
            component, module = kohya_keys.kohya_to_diffusers(name)
        except kohya_keys.UnmappedModuleError as e:
            raise InputError(f"{source}: {e}") from None
        down = state_dict[key]
        target = f"{component}.{module}"
        out[f"{target}.lora_A.weight"] = down
        out[f"{target}.lora_B.weight"] = state_dict[up_key]
        alpha_key = f"{name}.alpha"
        # No alpha in the file means scale 1 (sd-scripts: alpha defaults to the rank).
        alphas[target] = float(state_dict[alpha_key].item()) if alpha_key in state_dict else float(down.shape[0])
        used.update((key, up_key, alpha_key))
    left = [k for k in state_dict if k not in used]
    if left:
        raise InputError(f"{source}: {len(left)} keys are not LoRA down/up/alpha tensors, e.g. "
                         f"{', '.join(left[:3])} (LyCORIS/LoHa/DoRA files are not supported)")
    return out, alphas


def neutral_to_kohya(state_dict: dict[str, Any], alphas: dict[str, float], family: str) -> dict[str, Any]:
    """Neutral form -> kohya keys for `family` (SGM UNet names for SDXL and Kolors)."""
    import torch

    out: dict[str, Any] = {}
    for target, rank in module_ranks(state_dict).items():
        component, _, module = target.partition(".")
        try:
            name = kohya_keys.diffusers_to_kohya(component, module, family)
        except kohya_keys.UnmappedModuleError as e:
            raise InputError(f"cannot write kohya format: {e}") from None
        out[f"{name}.lora_down.weight"] = state_dict[f"{target}.lora_A.weight"]
        out[f"{name}.lora_up.weight"] = state_dict[f"{target}.lora_B.weight"]
        # float32 scalar: a float16 alpha would round values such as 0.1 * rank
        out[f"{name}.alpha"] = torch.tensor(float(alphas.get(target, rank)), dtype=torch.float32)
    return out


# ---- diffusers / peft ---------------------------------------------------------------------
def lora_config_kwargs(state_dict: dict[str, Any], alphas: dict[str, float], component: str) -> dict[str, Any]:
    """LoraConfig fields for one component (what diffusers stores in `lora_adapter_metadata`).

    Module names are full paths, so `target_modules`, `rank_pattern` and `alpha_pattern` select
    exactly the modules the file holds.
    """
    prefix = component + "."
    ranks = {t[len(prefix):]: r for t, r in module_ranks(state_dict).items() if t.startswith(prefix)}
    # Without `text_model.` the names match CLIP encoders with and without that level (transformers 5
    # flattens CLIPTextModel; diffusers strips it from the keys but not from this config).
    ranks = {m.removeprefix("text_model."): r for m, r in ranks.items()} if component != "unet" else ranks
    if not ranks:
        return {}
    mod_alphas = {m: float(alphas.get(prefix + canonical_module(component, m), r)) for m, r in ranks.items()}
    r, alpha = most_common(ranks.values()), most_common(mod_alphas.values())
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {m: v for m, v in ranks.items() if v != r},
        "alpha_pattern": {m: v for m, v in mod_alphas.items() if v != alpha},
        "target_modules": sorted(ranks),
    }


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's `rank_pattern`/`alpha_pattern` lookup (peft `tuners_utils.get_pattern_key`)."""
    for pattern, value in (patterns or {}).items():
        regex = pattern if pattern.startswith("^") else rf"(.*\.)?({pattern})$"
        if re.match(regex, module):
            return value
    return default


def alphas_from_config(state_dict: dict[str, Any], config: dict[str, Any] | None, component: str,
                       source: str) -> dict[str, float]:
    """Per-module kohya alphas from LoraConfig fields; no config means alpha = rank (diffusers' default)."""
    config = config or {}
    if config.get("use_dora"):
        raise InputError(f"{source}: DoRA LoRAs are not supported")
    alphas = {}
    for target, rank in module_ranks(state_dict).items():
        if not target.startswith(component + "."):
            continue
        module = target[len(component) + 1:]
        alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", rank)))
        if config.get("use_rslora"):  # scale alpha / sqrt(r) == (alpha * sqrt(r)) / r
            alpha *= math.sqrt(rank)
        alphas[target] = alpha
    return alphas


def diffusers_to_neutral(state_dict: dict[str, Any], adapter_metadata: dict[str, Any] | None,
                         source: str = "LoRA") -> tuple[dict[str, Any], dict[str, float]]:
    """diffusers layout (also the older `to_q_lora.down` spelling) -> neutral form."""
    out: dict[str, Any] = {}
    for component in COMPONENTS:
        part = {k[len(component) + 1:]: v for k, v in state_dict.items() if k.startswith(component + ".")}
        if part:
            part = _to_peft_keys(part, component)
            out.update({f"{component}.{canonical_module(component, k)}": v for k, v in part.items()})
    alphas: dict[str, float] = {}
    meta = adapter_metadata or {}
    for component in COMPONENTS:
        config = {k[len(component) + 1:]: v for k, v in meta.items() if k.startswith(component + ".")}
        alphas.update(alphas_from_config(out, config or None, component, source))
    return out, alphas


def peft_to_neutral(state_dict: dict[str, Any], adapter_metadata: dict[str, Any] | None, component: str = "unet",
                    source: str = "LoRA") -> tuple[dict[str, Any], dict[str, float]]:
    """One model's unprefixed peft keys (PEFT's `base_model.model.` prefix allowed) -> neutral form."""
    part = {k.removeprefix("base_model.model."): v for k, v in state_dict.items()}
    part = _to_peft_keys(part, component)
    out = {f"{component}.{canonical_module(component, k)}": v for k, v in part.items()}
    return out, alphas_from_config(out, adapter_metadata, component, source)


def to_neutral(fmt: str, state_dict: dict[str, Any], adapter_metadata: dict[str, Any] | None,
               source: str = "LoRA") -> tuple[dict[str, Any], dict[str, float]] | None:
    """Plain LoRA weights in a detected layout (`detect_lora_format`) -> (neutral state dict, alphas);
    None for a layout that is not one of kohya / diffusers / peft (callers word their own error)."""
    if fmt == "kohya":
        return kohya_to_neutral(state_dict, source)
    if fmt == "diffusers":
        return diffusers_to_neutral(state_dict, adapter_metadata, source)
    if fmt == "peft":
        return peft_to_neutral(state_dict, adapter_metadata, "unet", source)
    return None


def canonical_module(component: str, name: str) -> str:
    """Text encoder paths keep CLIP's `text_model.` level, which transformers 5 flattens out of
    `CLIPTextModel` but every LoRA file (kohya, diffusers) still spells."""
    if component != "unet" and not name.startswith(("text_model.", "text_projection")):
        return "text_model." + name
    return name


def _to_peft_keys(part: dict[str, Any], component: str) -> dict[str, Any]:
    if all(".lora_A." in k or ".lora_B." in k for k in part):
        return part
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    if component == "unet":
        return convert_unet_state_dict_to_peft(part)
    return convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))


def neutral_to_diffusers(state_dict: dict[str, Any], alphas: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Neutral form -> (diffusers file state dict, `lora_adapter_metadata` dict)."""
    meta: dict[str, Any] = {}
    for component in COMPONENTS:
        meta.update({f"{component}.{k}": v for k, v in lora_config_kwargs(state_dict, alphas, component).items()})
    return dict(state_dict), meta


def neutral_to_peft(state_dict: dict[str, Any], alphas: dict[str, float]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Neutral form -> (unprefixed UNet peft state dict, LoraConfig metadata). UNet-only by nature."""
    others = sorted({k.split(".")[0] for k in state_dict} - {"unet"})
    if others:
        raise InputError(f"peft format holds one model, but this LoRA also has {', '.join(others)} weights; "
                         "use --to diffusers or --to kohya")
    sd = {k[len("unet."):]: v for k, v in state_dict.items()}
    return sd, lora_config_kwargs(state_dict, alphas, "unet")
