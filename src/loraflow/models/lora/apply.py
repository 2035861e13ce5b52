"""Put LoRA files into a diffusers pipeline (SD1.5, SDXL, Kolors), each with its own weight.

    names = apply_loras(pipe, [("style.safetensors", 0.8), ("person.safetensors", 1.0)], "sdxl")
    image = pipe(...)
    remove_loras(pipe)            # back to the base model; the pipeline can take other LoRAs

Every file goes through our reader (`load.read_lora`), so kohya, diffusers and peft files load the
same way, with the alpha stored in the file, and are checked against the pipeline's modules first:
a key that matches no module, or a LoRA for another family, is a one-line error, never a silent
no-op. The adapters are then injected with diffusers' `unet.load_lora_adapter` and, for text
encoders, peft's `inject_adapter_in_model`, configured with the file's exact ranks and alphas. We do not call
`pipe.load_lora_weights(path)`: for `KolorsPipeline` (StableDiffusionLoraLoaderMixin) diffusers 0.42
does not map kohya's SGM block names, and it only warns about keys that match nothing.
"""
from __future__ import annotations

import os
import re
from typing import Any, Sequence

from loraflow.errors import InputError
from loraflow.models.families import family_title
from loraflow.models.lora import formats, lycoris
from loraflow.models.lora.load import LoraFile, fits_family, guess_family, read_lora, to_diffusers_state_dict

LoraSpec = tuple[str | os.PathLike | LoraFile, float]  # (file, weight)


def apply_loras(pipe, loras: Sequence[LoraSpec], family: str, *, allow_pickle: bool = False) -> list[str]:
    """Load `[(path or LoraFile, weight), ...]` into `pipe`, replacing any LoRAs it had.

    Output = base + sum_i weight_i * (alpha_i / rank_i) * B_i A_i per module. Returns the adapter names.
    """
    files = [spec if isinstance(spec, LoraFile) else read_lora(spec, allow_pickle=allow_pickle) for spec, _ in loras]
    prepared = [(lora, *_fit_to_pipeline(pipe, lora, family)) for lora in files]  # check all before changing pipe
    # LyCORIS files (LoHa, LoKr, DoRA, diffs) are merged into the weights, reversibly (`lycoris` module)
    merged = lycoris.plan_for_pipeline(pipe, [(f, w) for f, (_, w) in zip(files, loras) if f.adapters],
                                       _components(pipe))
    remove_loras(pipe)
    names: list[str] = []
    try:
        lycoris.merge(merged)
        for i, (lora, state_dict, alphas) in enumerate(prepared):
            name = _adapter_name(lora, i, names)
            _load_adapter(pipe, name, state_dict, alphas)
            names.append(name)
    except BaseException:
        remove_loras(pipe)
        raise
    _set_weights(pipe, names, [float(weight) for _, weight in loras])
    return names


def remove_loras(pipe) -> None:
    """Take every LoRA out of `pipe` (UNet and text encoders): it computes the base model again."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in _components(pipe):
        model = getattr(pipe, component)
        if any(isinstance(m, BaseTunerLayer) for m in model.modules()):
            if component == "unet":
                model.unload_lora()
            else:
                from diffusers.utils import recurse_remove_peft_layers

                recurse_remove_peft_layers(model)
                if getattr(model, "peft_config", None) is not None:
                    del model.peft_config
                    model._hf_peft_config_loaded = False
        lycoris.restore(model)


def _components(pipe) -> list[str]:
    return [c for c in formats.COMPONENTS if getattr(pipe, c, None) is not None]


def _adapter_name(lora: LoraFile, index: int, taken: list[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9_]", "_", lora.path.stem if lora.path else "lora")[:40]
    name = f"{index}_{stem}"
    return name if name not in taken else f"{name}_{len(taken)}"


def _fit_to_pipeline(pipe, lora: LoraFile, family: str) -> tuple[dict[str, Any], dict[str, float]]:
    """The file's tensors renamed for this pipeline's modules, after checking every one has a home."""
    state_dict, alphas = to_diffusers_state_dict(lora, family)
    out_sd: dict[str, Any] = {}
    out_alphas: dict[str, float] = {}
    bad: list[str] = []
    for component in lora.components():
        model = getattr(pipe, component, None)
        if model is None:
            raise InputError(f"{lora.name} has {component} weights, but the {family_title(family)} "
                             f"pipeline has no {component}")
        modules = dict(model.named_modules())
        # transformers 5 flattens CLIPTextModel (no `text_model.` level); files keep the old path.
        strip = component != "unet" and not hasattr(model, "text_model")
        for target, rank in formats.module_ranks(state_dict).items():
            if not target.startswith(component + "."):
                continue
            module = target[len(component) + 1:]
            name = module.removeprefix("text_model.") if strip else module
            down, up = state_dict[f"{target}.lora_A.weight"], state_dict[f"{target}.lora_B.weight"]
            if not _fits(modules.get(name), down, up):
                bad.append(target)
                continue
            out_sd[f"{component}.{name}.lora_A.weight"] = down
            out_sd[f"{component}.{name}.lora_B.weight"] = up
            # keyed as `lora_config_kwargs` looks it up (with CLIP's `text_model.`), else alpha falls back to rank
            out_alphas[f"{component}.{formats.canonical_module(component, name)}"] = alphas[target]
    if bad:
        apparent = guess_family(lora)
        if not fits_family(apparent, family):
            raise InputError(f"{lora.name} appears to be a {family_title(apparent)} LoRA; "
                             f"it does not fit this {family_title(family)} model")
        raise InputError(f"{lora.name}: {len(bad)} of {len(alphas)} LoRA modules match no module of the "
                         f"{family_title(family)} model (wrong family?), e.g. {', '.join(bad[:3])}")
    return out_sd, out_alphas


def _fits(module, down, up) -> bool:
    """lora_A (r, in[, kh, kw]) and lora_B (out, r[, 1, 1]) against a Linear/Conv2d weight (out, in[, kh, kw])."""
    weight = getattr(module, "weight", None)
    if weight is None or down.ndim != weight.ndim or up.ndim != weight.ndim:
        return False
    return tuple(down.shape[1:]) == tuple(weight.shape[1:]) and up.shape[0] == weight.shape[0] \
        and up.shape[1] == down.shape[0]


def _load_adapter(pipe, name: str, state_dict: dict[str, Any], alphas: dict[str, float]) -> None:
    for component in _components(pipe):
        config = formats.lora_config_kwargs(state_dict, alphas, component)
        if not config:
            continue
        part = {k: v for k, v in state_dict.items() if k.startswith(component + ".")}
        model = getattr(pipe, component)
        if component == "unet":
            metadata = {f"unet.{k}": v for k, v in config.items()}
            model.load_lora_adapter(part, prefix="unet", adapter_name=name, metadata=metadata, _pipeline=pipe)
        else:
            _load_text_encoder_adapter(model, name, {k[len(component) + 1:]: v for k, v in part.items()}, config)


def _load_text_encoder_adapter(model, name: str, state_dict: dict[str, Any], config: dict[str, Any]) -> None:
    """With peft's public API: transformers 5.24's adapter methods (`add_adapter`, `set_adapter`)
    demand peft >= 0.22 (0.21 is installed), and diffusers' text encoder loader is private."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    previous = dict(getattr(model, "peft_config", None) or {})
    lora_config = LoraConfig(**config)
    inject_adapter_in_model(lora_config, model, adapter_name=name)
    model.peft_config = {**previous, name: lora_config}  # a fresh injection keeps only its own config
    result = set_peft_model_state_dict(model, state_dict, adapter_name=name)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:  # cannot happen after `_fit_to_pipeline`; a bug if it does
        raise RuntimeError(f"LoRA keys not loaded into {type(model).__name__}: {unexpected[:3]}")


def _adapters_in(model) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    names: set[str] = set()
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            names.update(getattr(module, "lora_A", {}).keys())
    return names


def _set_weights(pipe, names: list[str], weights: list[float]) -> None:
    """Activate exactly `names` with `weights` in each model that holds them (per component, because
    diffusers' `pipe.set_adapters` fails for an adapter some component lacks, e.g. a UNet-only LoRA)."""
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder

    for component in _components(pipe):
        model = getattr(pipe, component)
        present = _adapters_in(model)
        pairs = [(n, w) for n, w in zip(names, weights) if n in present]
        if not pairs:
            continue
        sub_names, sub_weights = [n for n, _ in pairs], [w for _, w in pairs]
        if component == "unet":
            model.set_adapters(sub_names, sub_weights)
        else:
            set_adapters_for_text_encoder(sub_names, model, sub_weights)
