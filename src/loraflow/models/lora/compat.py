"""Will other tools load this LoRA? Every module of a kohya-layout file is resolved with the rules
ComfyUI, A1111 and diffusers use, against the modules of a model (the model at hand, or a full-size
architecture built on the meta device), plus the LoRA's measured effect.

Rules, re-implemented (no code copied):

- ComfyUI `comfy/lora.py::model_lora_keys_unet`: `lora_unet_<SGM path>` for every UNet weight, and
  `lora_unet_<diffusers path>` for the block modules; diffusers-layout keys only as
  `[unet.]<path with .to_x -> .processor.to_x, to_out.0 -> to_out>`. `model_lora_keys_clip`: only
  `mlp.fc1/fc2` and `self_attn.{q,k,v,out}_proj` of the encoder layers, as `lora_te_`/`lora_te1_`
  (CLIP-L) and `lora_te2_` (OpenCLIP-G), or `text_encoder[_2].text_model.encoder.layers.<i>.<part>`.
  Adapter types: LoRA/LoCon, LoHa, LoKr, DoRA, full diffs (`comfy/weight_adapter`).
- A1111 `extensions-builtin/Lora/lora_convert.py::convert_diffusers_name_to_compvis` + the
  `network_layer_mapping` of the LDM model (module paths with '_'): diffusers-named UNet keys are
  renamed with SD1.5's block arithmetic (an SDXL upsampler then lands on the wrong slot), SGM names
  by `lora_unet` -> `diffusion_model`, `lora_te1_text_model` -> `0_transformer_text_model`, and
  OpenCLIP q/k/v onto the fused `attn` module. Types: LoRA/LoCon, LoHa, LoKr, full (`network_*.py`).
- diffusers `loaders/lora_conversion_utils.py::_convert_non_diffusers_lora_to_diffusers`: kohya names
  in SGM or diffusers spelling (our `kohya_keys` is its inverse), plain LoRA and DoRA only.

A shape mismatch (the name resolves, the tensors do not fit) is reported as one, with both shapes.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from loraflow.atomic import atomic_save_safetensors
from loraflow.errors import InputError, ModelLoadError
from loraflow.models.lora import formats, kohya_keys
from loraflow.models.lora.apply import apply_loras, remove_loras
from loraflow.models.lora.load import guess_family, read_lora, read_state_dict
from loraflow.models.lora.tools import delta_shape, module_deltas
from loraflow.models.single_file import shipped_config_dir

TOOLS = ("ComfyUI", "A1111", "diffusers")
# adapter kinds each tool reads (`lycoris.Adapter.kind`, "dora" for anything with dora_scale, "locon_tucker")
_KINDS = {"ComfyUI": {"lora", "locon_tucker", "loha", "lokr", "dora", "diff"},
          "A1111": {"lora", "locon_tucker", "loha", "lokr", "dora", "diff"},
          "diffusers": {"lora", "dora"}}
_CLIP_PARTS = tuple(kohya_keys.OPENCLIP_PARTS)  # the text-encoder parts ComfyUI maps
# OpenCLIP part names with '_' (A1111's `network_layer_mapping` spelling)
_OPENCLIP_UNDERSCORED = {k.replace(".", "_"): v.replace(".", "_") for k, v in kohya_keys.OPENCLIP_PARTS.items()}
EFFECT_THRESHOLD = 1.0 / 255  # mean |pixel change| below one 8-bit level: no visible effect


@dataclass
class ToolResult:
    loaded: int = 0
    ignored: list[str] = field(default_factory=list)  # file module names the tool would skip


@dataclass
class CompatReport:
    modules: int
    tools: dict[str, ToolResult]
    shape_mismatches: list[tuple[str, tuple, tuple]]  # (module, model's weight shape, file's delta shape)
    effect: float | None = None  # mean |pixel change| (0..1) at weight 1 vs 0
    effect_setup: str = ""

    def warnings(self) -> list[str]:
        out = [f"{tool} would ignore {len(r.ignored)} of {self.modules} modules, e.g. {', '.join(r.ignored[:3])}"
               for tool, r in self.tools.items() if r.ignored]
        out += [f"shape mismatch at {m}: the model has {e}, the file {f}" for m, e, f in self.shape_mismatches[:5]]
        if self.effect is not None and self.effect < EFFECT_THRESHOLD:
            out.append(f"no measurable effect: mean pixel change {self.effect:.5f} at weight 1 vs 0")
        return out

    def to_json(self) -> str:
        return json.dumps({"modules": self.modules,
                           "tools": {t: {"loaded": r.loaded, "ignored": r.ignored[:20]} for t, r in self.tools.items()},
                           "shape_mismatches": [[m, list(e), list(f)] for m, e, f in self.shape_mismatches[:20]],
                           "effect": self.effect, "effect_setup": self.effect_setup}, sort_keys=True)


# ---- the model's modules ------------------------------------------------------------------------
def inventory(models: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """`<component>.<module>` (CLIP paths with `text_model.`) -> weight shape, for Linear / Conv2d
    (under peft adapters too: the wrapped layer counts, the adapter's own layers do not)."""
    import torch

    out = {}
    for component, model in models.items():
        if model is None:
            continue
        for name, module in model.named_modules():
            if ".lora_" in name:  # a peft adapter's own layers (a model being trained)
                continue
            name = name.removesuffix(".base_layer")  # the layer a peft adapter wraps
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                if component != "unet" and not name.startswith(("text_model.", "text_projection")):
                    name = "text_model." + name
                out[f"{component}.{name}"] = tuple(module.weight.shape)
    return out


@functools.lru_cache(maxsize=4)
def full_size_inventory(config_dir) -> dict[str, tuple[int, ...]]:
    """The modules of a full-size model from its diffusers configs, built on the meta device (cached:
    callers must not change the dict)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    models: dict[str, Any] = {}
    with torch.device("meta"):
        models["unet"] = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir / "unet"))
        for name, cls in (("text_encoder", CLIPTextModel), ("text_encoder_2", CLIPTextModelWithProjection)):
            if (config_dir / name / "config.json").is_file():
                models[name] = cls(CLIPTextConfig.from_json_file(config_dir / name / "config.json"))
    return inventory(models)


def layout_of(modules) -> kohya_keys.SgmLayout:
    """SGM block layout from diffusers UNet module names."""
    names = [m[len("unet."):] for m in modules if m.startswith("unet.")]
    levels = 1 + max(int(n.split(".")[1]) for n in names if n.startswith("down_blocks."))
    layers = 1 + max(int(n.split(".")[3]) for n in names if n.startswith("down_blocks.0.resnets."))
    down = tuple(any(n.startswith(f"down_blocks.{i}.attentions.") for n in names) for i in range(levels))
    up = tuple(any(n.startswith(f"up_blocks.{i}.attentions.") for n in names) for i in range(levels))
    return kohya_keys.SgmLayout(layers, down, up)


# ---- each tool's key map ------------------------------------------------------------------------
def _sgm(module: str, layout) -> str | None:
    try:
        return kohya_keys.unet_to_sgm(module, layout)
    except kohya_keys.UnmappedModuleError:
        return None


_CLIP_LAYER = re.compile(r"text_model\.encoder\.layers\.(\d+)\.(.+)")  # (layer index, part) of a CLIP module


def _targets(modules, layout):
    """(target, component, module name in it, its SGM name for a UNet module or None) per target module:
    what every tool's key map starts from."""
    for target in modules:
        component, _, name = target.partition(".")
        yield target, component, name, _sgm(name, layout) if component == "unet" else None


def comfyui_keys(modules, layout) -> dict[str, str]:
    """File module name -> target, as ComfyUI maps them."""
    out: dict[str, str] = {}
    for target, component, name, sgm in _targets(modules, layout):
        if component == "unet":
            if sgm is not None:
                out["lora_unet_" + sgm.replace(".", "_")] = target
                out["lora_unet_" + name.replace(".", "_")] = target  # `utils.unet_to_diffusers` names
                diffusers_name = name.replace(".to_", ".processor.to_")
                if diffusers_name.endswith(".to_out.0"):
                    diffusers_name = diffusers_name[:-2]
                out[diffusers_name] = out["unet." + diffusers_name] = target
            continue
        match = _CLIP_LAYER.fullmatch(name)
        if match is None or match.group(2) not in _CLIP_PARTS:
            continue
        kohya = f"text_model_encoder_layers_{match.group(1)}_{match.group(2).replace('.', '_')}"
        prefixes = ("lora_te2_",) if component == "text_encoder_2" else \
            ("lora_te_", "lora_te1_") if component == "text_encoder" else ()
        for prefix in prefixes:
            out[prefix + kohya] = target
        out[f"{component}.{name}"] = target
    return out


def a1111_modules(modules, layout) -> dict[str, str]:
    """A1111's `network_layer_mapping` (LDM module path with '_') -> target."""
    sdxl = any(m.startswith("text_encoder_2.") for m in modules)
    out: dict[str, str] = {}
    for target, component, name, sgm in _targets(modules, layout):
        if component == "unet":
            if sgm is not None:
                out["diffusion_model_" + sgm.replace(".", "_")] = target
        elif component == "text_encoder":
            out[("0_" if sdxl else "") + "transformer_" + name.replace(".", "_")] = target
        elif component == "text_encoder_2":
            match = _CLIP_LAYER.fullmatch(name)
            if match:
                part = _OPENCLIP_UNDERSCORED.get(match.group(2).replace(".", "_"))
                if part:
                    out.setdefault(f"1_model_transformer_resblocks_{match.group(1)}_{part}", target)
    return out


def a1111_resolve(key: str, mapping: dict[str, str]) -> bool:
    """`KeyConvert.original` + `convert_diffusers_name_to_compvis` (SD1.5 block arithmetic)."""
    name = _a1111_convert(key)
    if name in mapping:
        return True
    x_proj = re.match(r"(.*)_([qkv]_proj)$", name)
    if x_proj and x_proj.group(1) in mapping:
        return True
    if "lora_unet" in name:
        return name.replace("lora_unet", "diffusion_model") in mapping
    if "lora_te1_text_model" in name:
        return name.replace("lora_te1_text_model", "0_transformer_text_model") in mapping or \
            name.replace("lora_te1_text_model", "transformer_text_model") in mapping
    return False


def _a1111_convert(key: str) -> str:
    res = {"conv1": "in_layers_2", "conv2": "out_layers_3", "time_emb_proj": "emb_layers_1",
           "conv_shortcut": "skip_connection"}
    rules: list[tuple[str, Callable]] = [
        (r"lora_unet_conv_in(.*)", lambda m: f"diffusion_model_input_blocks_0_0{m[0]}"),
        (r"lora_unet_conv_out(.*)", lambda m: f"diffusion_model_out_2{m[0]}"),
        (r"lora_unet_time_embedding_linear_(\d+)(.*)", lambda m: f"diffusion_model_time_embed_{int(m[0]) * 2 - 2}{m[1]}"),
        (r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", lambda m: (
            f"diffusion_model_input_blocks_{1 + int(m[0]) * 3 + int(m[2])}_{1 if m[1] == 'attentions' else 0}_"
            f"{res.get(m[3], m[3]) if m[1] == 'resnets' else m[3]}")),
        (r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", lambda m: (
            f"diffusion_model_middle_block_{1 if m[0] == 'attentions' else int(m[1]) * 2}_"
            f"{res.get(m[2], m[2]) if m[0] == 'resnets' else m[2]}")),
        (r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", lambda m: (
            f"diffusion_model_output_blocks_{int(m[0]) * 3 + int(m[2])}_{1 if m[1] == 'attentions' else 0}_"
            f"{res.get(m[3], m[3]) if m[1] == 'resnets' else m[3]}")),
        (r"lora_unet_down_blocks_(\d+)_downsamplers_0_conv", lambda m: f"diffusion_model_input_blocks_{3 + int(m[0]) * 3}_0_op"),
        (r"lora_unet_up_blocks_(\d+)_upsamplers_0_conv",
         lambda m: f"diffusion_model_output_blocks_{2 + int(m[0]) * 3}_{2 if int(m[0]) > 0 else 1}_conv"),
        (r"lora_te_text_model_encoder_layers_(\d+)_(.+)", lambda m: f"transformer_text_model_encoder_layers_{m[0]}_{m[1]}"),
        # A1111 renames fc1/fc2/self_attn by string replaces; q/k/v land on the fused `attn` either way
        (r"lora_te2_text_model_encoder_layers_(\d+)_(.+)",
         lambda m: f"1_model_transformer_resblocks_{m[0]}_{_OPENCLIP_UNDERSCORED.get(m[1], m[1])}"),
    ]
    for pattern, build in rules:
        match = re.match(pattern, key)
        if match:
            return build(match.groups())
    return key


def diffusers_resolve(key: str, modules) -> str | None:
    """The target diffusers' kohya converter gives `key`, if the model has it."""
    try:
        component, module = kohya_keys.kohya_to_diffusers(key)
    except kohya_keys.UnmappedModuleError:
        return None
    target = f"{component}.{module}"
    return target if target in modules else None


# ---- the check ----------------------------------------------------------------------------------
def file_modules(lora) -> list[tuple[str, str, str, tuple[int, ...]]]:
    """(name as spelled in the file, target, adapter kind, delta shape) per module."""

    spelled: dict[str, str] = {}
    kohya = all(k.startswith(("lora_unet_", "lora_te")) for k in lora.state_dict)
    for key in lora.state_dict:
        name = key.partition(".")[0] if kohya else key.split(".lora_")[0]
        if kohya:
            try:
                component, module = kohya_keys.kohya_to_diffusers(name)
            except kohya_keys.UnmappedModuleError:
                continue
            spelled[f"{component}.{module}"] = name
        else:
            spelled.setdefault(_neutral_target(name, lora), name)
    out = []
    for target, (adapter, _) in module_deltas(lora).items():
        kind = "dora" if adapter.dora_scale is not None else adapter.kind
        if kind == "lora" and "lora_mid.weight" in adapter.tensors:
            kind = "locon_tucker"
        out.append((spelled.get(target, target), target, kind, delta_shape(adapter)))
    return out


def _neutral_target(name: str, lora) -> str:

    name = name.removeprefix("base_model.model.")
    component, _, module = name.partition(".")
    if component not in formats.COMPONENTS:
        component, module = "unet", name
    return f"{component}.{formats.canonical_module(component, module)}"


def _fits(expected: tuple[int, ...], found: tuple[int, ...]) -> bool:
    """Same shape, or a conv kernel stored flattened (LoHa/LoKr without Tucker factors)."""
    import math

    return expected == found or (len(found) == 2 and found[0] == expected[0]
                                 and found[1] == math.prod(expected[1:]))


def check_lora(lora, modules: dict[str, tuple[int, ...]], effect: float | None = None,
               effect_setup: str = "") -> CompatReport:
    """Resolve every module of `lora` with each tool's rules against `modules` (see `inventory`)."""
    layout = layout_of(modules)
    comfy, a1111 = comfyui_keys(modules, layout), a1111_modules(modules, layout)
    kohya = all(k.startswith(("lora_unet_", "lora_te")) for k in lora.state_dict)
    tools = {tool: ToolResult() for tool in TOOLS}
    mismatches = []
    rows = file_modules(lora)
    for name, target, kind, found in rows:
        expected = modules.get(target)
        if expected is not None and not _fits(expected, found):
            mismatches.append((target, expected, found))
            for result in tools.values():
                result.ignored.append(name)
            continue
        resolved = {"ComfyUI": comfy.get(name) == target,
                    "A1111": kohya and a1111_resolve(name, a1111),
                    "diffusers": (diffusers_resolve(name, modules) == target) if kohya else target in modules}
        for tool, ok in resolved.items():
            if ok and kind in _KINDS[tool]:
                tools[tool].loaded += 1
            else:
                tools[tool].ignored.append(name)
    return CompatReport(len(rows), tools, mismatches, effect, effect_setup)


def format_table(report: CompatReport) -> str:
    lines = [f"{'tool':<10} {'loads':>13} {'ignored':>8} {'shape mismatch':>15}"]
    for tool, r in report.tools.items():
        lines.append(f"{tool:<10} {f'{r.loaded}/{report.modules}':>13} {len(r.ignored):>8} "
                     f"{len(report.shape_mismatches):>15}")
    if report.effect is not None:
        lines.append(f"effect: mean pixel change {report.effect:.4f} at weight 1 vs 0 ({report.effect_setup})")
    lines += [f"warning: {w}" for w in report.warnings()]
    return "\n".join(lines)


# ---- measuring, storing, running ------------------------------------------------------------------
def measure_effect(pipe, lora, family: str, *, seed: int = 0, steps: int = 2, size: int = 64,
                   prompt: str = "a photo of a cat") -> tuple[float, str]:
    """Mean |pixel change| (0..1) between weight 1 and weight 0 at a fixed seed on `pipe`."""
    import torch

    images = []
    try:
        for weight in (0.0, 1.0):
            apply_loras(pipe, [(lora, weight)], family)
            images.append(pipe(prompt, num_inference_steps=steps, height=size, width=size, output_type="np",
                               generator=torch.Generator().manual_seed(seed)).images)
    finally:
        remove_loras(pipe)
    return float(abs(images[1] - images[0]).mean()), f"seed {seed}, {steps} steps, {size}x{size}, '{prompt}'"


def store_report(path, report: CompatReport) -> None:
    """Write the report into the file's metadata (`loraflow_compat`); tensors and hashes unchanged."""

    tensors, metadata = read_state_dict(path)
    metadata["loraflow_compat"] = report.to_json()
    atomic_save_safetensors(tensors, path, metadata)


def check_file(path, *, family: str | None = None, pipe=None, measure: bool = True, size: int = 64,
               store: bool = True) -> CompatReport:
    """Check `path` against `pipe` (the model at hand; its effect measured too), or without one
    against the family's full-size architecture from the configs shipped with loraflow."""

    lora = read_lora(path)
    family = family or guess_family(lora)
    if pipe is not None:

        modules = inventory({c: getattr(pipe, c, None) for c in formats.COMPONENTS})
        effect, setup = measure_effect(pipe, lora, family, size=size) if measure else (None, "")
    else:

        if family is None:
            raise InputError(f"{lora.name}: cannot tell which model family it is for; pass --family or --model")
        try:
            modules = full_size_inventory(shipped_config_dir(family))
        except ModelLoadError:
            raise InputError(f"no full-size {family} configs ship with loraflow; pass --model to check "
                             "against a model") from None
        effect, setup = None, ""
    report = check_lora(lora, modules, effect, setup)
    if store and lora.path is not None and lora.path.suffix == ".safetensors":
        store_report(lora.path, report)
    return report


def check_trained(path, models: dict[str, Any]) -> str:
    """The key check of a freshly trained file against the model it was trained on (adapters still
    in place), stored in the file; returns the printed table. Effect: not measured here (the
    training pipeline may hold no VAE / text encoder when their outputs were cached)."""

    report = check_lora(read_lora(path), inventory(models))
    store_report(path, report)
    return format_table(report)
