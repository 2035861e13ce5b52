"""LyCORIS adapters (LoCon, LoHa, LoKr, DoRA, full diffs): read from a file, merged into the weights.

Key layout per module (kohya names, `lora_unet_<module>.<suffix>`; what LyCORIS, kohya, ComfyUI and
A1111 write and read):

    LoRA / LoCon   lora_down.weight (r, in[, kh, kw]), lora_up.weight (out, r[, 1, 1]),
                   lora_mid.weight (r, r, kh, kw) for the Tucker (CP) conv variant
    LoHa           hada_w1_a (out, r), hada_w1_b (r, in*k), hada_w2_a, hada_w2_b;
                   Tucker: hada_t1/hada_t2 (r, r, kh, kw) with w*_a (r, out), w*_b (r, in)
    LoKr           lokr_w1 | lokr_w1_a @ lokr_w1_b,  lokr_w2 | lokr_w2_a @ lokr_w2_b | Tucker lokr_t2
    DoRA           dora_scale beside any of the above (kohya layout), or peft's lora_magnitude_vector
    full           diff (the whole delta), diff_b (bias delta)
    every type     alpha (scale = alpha / rank; no alpha means scale 1)

The maths follows ComfyUI `comfy/weight_adapter/{lora,loha,lokr,base}.py` (what a ComfyUI user sees)
and LyCORIS `lycoris/functional/{locon,loha,lokr,general}.py` (what the trainer meant):

    LoRA   dW = up @ down * alpha / r                     (Tucker: sum_ij mid[i,j] up[:,i] down[j,:])
    LoHa   dW = (w1a @ w1b) * (w2a @ w2b) * alpha / r     (Hyeon-Woo et al. 2022, FedPara)
    LoKr   dW = kron(w1, w2) * alpha / r, r = rank of the decomposed factor, scale 1 when neither is
    DoRA   W' = dora_scale * (W + dW) / ||W + dW||        (Liu et al. 2024; norm per output row when
           dora_scale is (out, 1...), else per input column as LyCORIS' default `wd_on_out=False`)
    weight w:  W + w * (W' - W)   -- so weight 0 is the base model, exactly

ComfyUI's `weight_decompose` normalises the output-axis case by the *base* weight's norm; LyCORIS and
peft (which trained such files) use the merged weight's norm, as the DoRA paper does. We follow them.

Merging is reversible: the first patch of a module keeps its base weight on the module
(`_loraflow_base`), later patches start from it, and `restore` puts it back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraflow.errors import InputError
from loraflow.models.lora import formats, kohya_keys

_LORA = ("lora_up.weight", "lora_down.weight", "lora_mid.weight")
LOHA_KEYS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_KEYS = ("lokr_w1", "lokr_w2", "lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_DIFF = ("diff", "diff_b")
_COMMON = ("alpha", "dora_scale")
KNOWN_SUFFIXES = frozenset(_LORA + LOHA_KEYS + LOKR_KEYS + _DIFF + _COMMON)
_KOHYA_PREFIXES = formats._KOHYA_PREFIXES  # one list of kohya module-name prefixes
SUPPORTED = "LoRA/LoCon (lora_up/down/mid), LoHa (hada_*), LoKr (lokr_*), DoRA (dora_scale), full (diff, diff_b)"
_EPS = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps, as ComfyUI and LyCORIS add to the norm
_BASE_ATTR = "_loraflow_base"  # (weight, bias) of a module before any LyCORIS patch


@dataclass
class Adapter:
    """One module's adapter as stored: `kind` is lora | loha | lokr | diff; tensors keyed by suffix."""

    kind: str
    tensors: dict[str, Any]
    alpha: float | None = None
    dora_scale: Any = None  # (out, 1, ...) per output row or (1, in, ...) per input column
    bias: Any = field(default=None, repr=False)  # diff_b

    @property
    def rank(self) -> int | None:
        t = self.tensors
        if self.kind == "lora":
            return int(t["lora_down.weight"].shape[0])
        if self.kind == "loha":
            return int(t["hada_w1_b"].shape[0])
        if self.kind == "lokr":  # ComfyUI: the decomposed factor's rank (w2's when both are)
            for key in ("lokr_w2_b", "lokr_w1_b"):
                if key in t:
                    return int(t[key].shape[0])
        return None

    @property
    def scale(self) -> float:
        rank = self.rank
        return self.alpha / rank if self.alpha is not None and rank else 1.0

    def delta(self, shape) -> Any:
        """dW (float32, alpha/rank applied), reshaped to the weight's `shape`."""
        t = {k: v.float() for k, v in self.tensors.items()}
        if self.kind == "lora":
            up, down = t["lora_up.weight"], t["lora_down.weight"]
            if "lora_mid.weight" in t:  # LyCORIS functional/locon.py: rebuild_tucker(mid, up^T, down)
                dw = _tucker(t["lora_mid.weight"], up.flatten(1).T, down.flatten(1))
            else:
                dw = up.flatten(1) @ down.flatten(1)
        elif self.kind == "loha":
            if "hada_t1" in t:  # comfy loha.py: einsum("i j k l, j r, i p -> p r k l")
                dw = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) \
                    * _tucker(t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
            else:
                dw = (t["hada_w1_a"] @ t["hada_w1_b"]) * (t["hada_w2_a"] @ t["hada_w2_b"])
        elif self.kind == "lokr":
            dw = _kron(_lokr_factor(t, "1"), _lokr_factor(t, "2"))
        else:
            dw = t["diff"]
        return (dw * self.scale).reshape(shape)

    def patched(self, weight, strength: float):
        """`weight` (float32) with this adapter applied at `strength` (ComfyUI's `calculate_weight`)."""
        if not self.tensors:  # a bias-only diff
            return weight
        dw = self.delta(weight.shape)
        if self.dora_scale is None:
            return weight + strength * dw
        merged = weight + dw
        dora = self.dora_scale.float()
        if dora.shape[0] == weight.shape[0] and weight.shape[0] != 1:  # per output row (peft, wd_on_out)
            norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(-1, *[1] * (merged.ndim - 1))
        else:  # per input column (kohya / LyCORIS files)
            norm = merged.transpose(0, 1).reshape(merged.shape[1], -1).norm(dim=1) \
                .reshape(1, -1, *[1] * (merged.ndim - 2))
        decomposed = merged * (dora.reshape(norm.shape) / (norm + _EPS))
        return weight + strength * (decomposed - weight)


def _tucker(t, wa, wb):
    """LyCORIS general.py `rebuild_tucker`: sum_ij t[i, j, ...] wa[i, p] wb[j, r] -> (p, r, ...)."""
    import torch

    return torch.einsum("i j ..., i p, j r -> p r ...", t, wa, wb)


def _lokr_factor(t: dict[str, Any], n: str):
    """LoKr's w1 or w2, whole or rebuilt from its factors (LyCORIS functional/lokr.py `diff_weight`)."""
    if f"lokr_w{n}" in t:
        return t[f"lokr_w{n}"]
    a, b = t[f"lokr_w{n}_a"], t[f"lokr_w{n}_b"]
    if f"lokr_t{n}" in t:
        return _tucker(t[f"lokr_t{n}"], a, b)
    return (a @ b.reshape(b.shape[0], -1)).reshape(a.shape[0], *b.shape[1:])


def _kron(w1, w2):
    """LyCORIS `make_kron`: a 2-D w1 with a conv w2 gets trailing unit dims first."""
    import torch

    while w1.ndim < w2.ndim:
        w1 = w1.unsqueeze(-1)
    return torch.kron(w1, w2.contiguous())


# ---- reading ------------------------------------------------------------------------------------
def read_adapters(state_dict: dict[str, Any], adapter_metadata: dict[str, Any] | None,
                  source: str = "LoRA") -> tuple[dict[str, float], dict[str, Adapter]]:
    """A LyCORIS state dict -> (alphas, adapters), both keyed `<component>.<module>` (diffusers names)."""
    if all(k.startswith(_KOHYA_PREFIXES) for k in state_dict):
        adapters = parse_kohya(state_dict, source)
    else:
        adapters = _parse_peft_dora(state_dict, adapter_metadata, source)
    return {t: nominal_alpha(a) for t, a in adapters.items()}, adapters


def parse_kohya(state_dict: dict[str, Any], source: str = "LoRA") -> dict[str, Adapter]:
    """kohya-named LyCORIS tensors -> {`<component>.<module>`: Adapter}.

    An unknown suffix is a one-line error naming its key pattern; nothing is skipped.
    """
    groups: dict[str, dict[str, Any]] = {}
    for key, value in state_dict.items():
        name, _, suffix = key.partition(".")
        if suffix not in KNOWN_SUFFIXES:
            raise InputError(f"{source}: unsupported LoRA adapter type: key '{key}' (pattern '<module>.{suffix}'); "
                             f"loraflow reads {SUPPORTED}")
        groups.setdefault(name, {})[suffix] = value
    adapters = {}
    for name, parts in groups.items():
        try:
            component, module = kohya_keys.kohya_to_diffusers(name)
        except kohya_keys.UnmappedModuleError as e:
            raise InputError(f"{source}: {e}") from None
        adapters[f"{component}.{module}"] = _adapter(name, parts, source)
    return adapters


def _parse_peft_dora(state_dict: dict[str, Any], adapter_metadata: dict[str, Any] | None,
                     source: str) -> dict[str, Adapter]:
    """diffusers (`unet.<module>.lora_A.weight`) or peft (`<module>.lora_A.weight`) DoRA files: the
    plain-LoRA reader takes lora_A/lora_B and alphas, the magnitudes are matched by module name."""
    marker = ".lora_magnitude_vector"
    magnitudes = {k: v for k, v in state_dict.items() if marker in k}
    rest = {k: v for k, v in state_dict.items() if k not in magnitudes}
    fmt = formats.detect_lora_format(rest)
    meta = {k: v for k, v in (adapter_metadata or {}).items() if not k.endswith("use_dora")}
    if fmt not in ("diffusers", "peft"):  # kohya DoRA files carry `dora_scale`, read elsewhere
        raise InputError(f"{source}: DoRA magnitudes beside keys that are not LoRA A/B weights "
                         f"(e.g. {', '.join(list(rest)[:2])})")
    neutral, alphas = formats.to_neutral(fmt, rest, meta, source)
    by_target = {}
    for key, value in magnitudes.items():
        head = key.removeprefix("base_model.model.").split(marker)[0]
        if fmt == "peft":
            head = "unet." + head
        component, _, module = head.partition(".")
        by_target[f"{component}.{formats.canonical_module(component, module)}"] = value
    stray = sorted(set(by_target) - set(alphas))
    if stray:
        raise InputError(f"{source}: DoRA magnitude for '{stray[0]}' has no lora_A/lora_B weights")
    return dora_adapters(neutral, alphas, by_target)


def _adapter(name: str, parts: dict[str, Any], source: str) -> Adapter:
    alpha = float(parts["alpha"].item()) if "alpha" in parts else None
    kinds = [kind for kind, suffixes in (("lora", _LORA), ("loha", LOHA_KEYS), ("lokr", LOKR_KEYS), ("diff", _DIFF))
             if any(s in parts for s in suffixes)]
    if len(kinds) != 1:
        raise InputError(f"{source}: module '{name}' has {' and '.join(kinds) or 'no'} adapter weights "
                         f"(keys {', '.join(sorted(parts))}); expected one of {SUPPORTED}")
    kind = kinds[0]
    tensors = {k: v for k, v in parts.items() if k not in _COMMON and k != "diff_b"}
    required = {"lora": ("lora_up.weight", "lora_down.weight"),
                "loha": ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"), "lokr": (), "diff": ()}[kind]
    missing = [k for k in required if k not in tensors]
    if kind == "lokr":
        missing += [f"lokr_w{n}" for n in "12" if f"lokr_w{n}" not in tensors
                    and not {f"lokr_w{n}_a", f"lokr_w{n}_b"} <= set(tensors)]
    if "hada_t1" in tensors and "hada_t2" not in tensors:
        missing.append("hada_t2")
    if missing:
        raise InputError(f"{source}: {kind} module '{name}' lacks '{name}.{missing[0]}'")
    return Adapter(kind, tensors, alpha, parts.get("dora_scale"), parts.get("diff_b"))


def dora_adapters(neutral: dict[str, Any], alphas: dict[str, float], magnitudes: dict[str, Any]) -> dict[str, Adapter]:
    """peft/diffusers DoRA (`lora_A`, `lora_B`, `lora_magnitude_vector` per module) -> adapters.

    peft's magnitude is per output channel ((out,) for Linear, (1, out, 1, 1) for Conv2d)."""
    out: dict[str, Adapter] = {}
    for key, down in neutral.items():
        if not key.endswith(".lora_A.weight"):
            continue
        target = key[: -len(".lora_A.weight")]
        up = neutral[f"{target}.lora_B.weight"]
        magnitude = magnitudes.get(target)
        dora = None if magnitude is None else magnitude.reshape(up.shape[0], *[1] * (down.ndim - 1))
        out[target] = Adapter("lora", {"lora_down.weight": down, "lora_up.weight": up}, alphas[target], dora)
    return out


def nominal_alpha(adapter: Adapter) -> float:
    """The alpha a kohya reader would assume for this module (scale * rank; 1.0 for full diffs)."""
    rank = adapter.rank
    return adapter.alpha if adapter.alpha is not None else float(rank or 1)


# ---- merging into a model ----------------------------------------------------------------------
def check_fits(adapter: Adapter, module, target: str, source: str) -> None:
    """One-line error when `module` cannot take `adapter` (a shape mismatch names both shapes)."""
    import torch

    weight = getattr(module, "weight", None)
    if weight is None:
        raise InputError(f"{source}: LoRA module '{target}' matches no module of this model (wrong family?)")
    try:
        if adapter.tensors:  # empty for a bias-only diff
            with torch.device("meta"):  # shapes only, no arithmetic
                meta = {k: torch.empty(v.shape) for k, v in adapter.tensors.items()}
            Adapter(adapter.kind, meta, adapter.alpha).delta(weight.shape)  # raises on a shape that cannot fit
            if adapter.dora_scale is not None and adapter.dora_scale.numel() not in weight.shape[:2]:
                raise RuntimeError("dora_scale")
    except RuntimeError:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in adapter.tensors.items())
        if adapter.dora_scale is not None:
            shapes += f", dora_scale {tuple(adapter.dora_scale.shape)}"
        raise InputError(f"{source}: shape mismatch at '{target}': the model's weight is {tuple(weight.shape)}, "
                         f"the file holds {shapes}") from None
    bias = getattr(module, "bias", None)
    if adapter.bias is not None and (bias is None or tuple(bias.shape) != tuple(adapter.bias.shape)):
        found = None if bias is None else tuple(bias.shape)
        raise InputError(f"{source}: shape mismatch at '{target}.diff_b': the model's bias is {found}, "
                         f"the file holds {tuple(adapter.bias.shape)}")


def merge(modules: list[tuple[Any, list[tuple[Adapter, float]]]]) -> None:
    """Patch each module: W = base, then every (adapter, strength) in order. Reversible by `restore`."""
    import torch

    with torch.no_grad():
        for module, adapters in modules:
            base = getattr(module, _BASE_ATTR, None)
            if base is None:
                bias = module.bias.detach().clone() if getattr(module, "bias", None) is not None else None
                base = (module.weight.detach().clone(), bias)
                setattr(module, _BASE_ATTR, base)
            weight = base[0].float()
            bias = base[1].float() if base[1] is not None else None
            for adapter, strength in adapters:
                weight = adapter.patched(weight, strength)
                if adapter.bias is not None:
                    bias = bias + strength * adapter.bias.float()
            module.weight.copy_(weight.to(module.weight.dtype))
            if bias is not None:
                module.bias.copy_(bias.to(module.bias.dtype))


def restore(model) -> int:
    """Put back every weight `merge` changed in `model`; returns how many modules it restored."""
    import torch

    count = 0
    with torch.no_grad():
        for module in model.modules():
            base = module.__dict__.pop(_BASE_ATTR, None)
            if base is None:
                continue
            module.weight.copy_(base[0])
            if base[1] is not None:
                module.bias.copy_(base[1])
            count += 1
    return count


def plan_for_pipeline(pipe, files: list[tuple[Any, float]], components: list[str]) -> list[tuple[Any, list]]:
    """[(LoraFile with adapters, weight), ...] -> `merge`'s input, after checking every module fits."""
    plan: dict[tuple[str, str], tuple[Any, list]] = {}
    named = {c: dict(getattr(pipe, c).named_modules()) for c in components}
    for lora, weight in files:
        for target, adapter in lora.adapters.items():
            component, _, name = target.partition(".")
            model = getattr(pipe, component, None) if component in components else None
            if model is None:
                raise InputError(f"{lora.name} has {component} weights, but this pipeline has no {component}")
            if not hasattr(model, "text_model"):  # transformers 5 flattens CLIPTextModel; files keep the path
                name = name.removeprefix("text_model.")
            module = named[component].get(name)
            module = getattr(module, "base_layer", module)  # under a peft layer: the layer it wraps
            check_fits(adapter, module, target, lora.name)
            plan.setdefault((component, name), (module, []))[1].append((adapter, float(weight)))
    return list(plan.values())
