"""What a LoRA file holds, as text: `lora info`, the web UI's LoRA list and the tools' reports read it."""
from __future__ import annotations

from collections import Counter

from loraflow.models.lora.load import guess_family


def info_fields(lora) -> dict[str, str]:
    """The facts `lora info` prints, by name (`format`, `type`, `family`, `rank`, `alpha`, `modules`,
    `keys`, `targets`, `base_model`, `file`), each as the text it prints."""
    modules = lora.modules()
    ranks = Counter(r for r, _ in modules.values())
    alphas = Counter(a for _, a in modules.values())
    targets = sorted({t.split(".")[0] + ":" + _short_target(t) for t in modules})
    counts = Counter(t.split(".")[0] for t in modules)
    return {
        "file": lora.name,
        "format": lora.format,
        "type": _types(lora),
        "family": guess_family(lora) or "unknown",
        "rank": _counted(ranks),
        "alpha": _counted(alphas),
        "modules": ", ".join(f"{c} {n}" for c, n in counts.items()),
        "keys": f"unet {_keys(lora, 'unet')}, text encoders {len(lora.state_dict) - _keys(lora, 'unet')}",
        "targets": ", ".join(targets),
        "base_model": base_model_line(lora.metadata),
    }


def format_info(lora) -> str:
    """Text for `lora info`: one `name: value` line per fact of `info_fields`, then the rank per block
    and the training metadata."""
    lines = [f"{(name.replace('_', ' ') + ':'):<13}{value}" for name, value in info_fields(lora).items()]
    lines += ["blocks:", *block_table(lora.modules())]
    meta = {k: v for k, v in sorted(lora.metadata.items())
            if k.startswith(("ss_", "sshs_", "modelspec.")) or k == "lora_adapter_metadata"}
    if meta:
        lines.append("metadata:")
        lines += [f"  {k}: {_clip(v)}" for k, v in meta.items()]
    return "\n".join(lines)


def _types(lora) -> str:
    """LoRA, or the LyCORIS kinds with their module counts (`loha (120 modules), diff (2 modules)`)."""
    if not lora.adapters:
        return "lora"
    kinds = Counter(("dora" if a.dora_scale is not None else a.kind) for a in lora.adapters.values())
    return ", ".join(f"{kind} ({n} modules)" for kind, n in kinds.most_common())


def _keys(lora, component: str) -> int:
    if lora.format == "lycoris":
        return sum(not k.startswith(("lora_te", "text_encoder")) for k in lora.state_dict)
    if lora.format == "kohya":
        return sum(k.startswith("lora_unet_") for k in lora.state_dict)
    if lora.format == "peft":
        return len(lora.state_dict) if component == "unet" else 0
    return sum(k.startswith(component + ".") for k in lora.state_dict)


_CONTAINERS = {"down_blocks", "up_blocks", "attentions", "resnets", "transformer_blocks", "layers",
               "downsamplers", "upsamplers"}


def _short_target(target: str) -> str:
    """`unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q` -> `attn1.to_q`."""
    parts = target.split(".")
    cut = max((i for i in range(1, len(parts)) if parts[i].isdigit() and parts[i - 1] in _CONTAINERS), default=0)
    return ".".join(parts[cut + 1:]) or parts[-1]


def _counted(counter) -> str:
    return ", ".join(f"{v:g} ({n} modules)" if len(counter) > 1 else f"{v:g}" for v, n in counter.most_common())


def _clip(text: str, limit: int = 200) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def base_model_line(metadata: dict[str, str]) -> str:
    """What the file says it was trained on: model name, base version, architecture (kohya + modelspec)."""
    parts = [metadata[k] for k in ("ss_sd_model_name", "ss_base_model_version", "modelspec.architecture")
             if metadata.get(k)]
    return ", ".join(dict.fromkeys(parts)) or "not recorded"


def block_table(modules: dict[str, tuple[int, float]]) -> list[str]:
    """Rank / alpha per block (`unet down_blocks.1: 20 modules, rank 4, alpha 2`), in model order."""
    blocks: dict[str, list[tuple[int, float]]] = {}
    for target, value in modules.items():
        parts = target.split(".")
        if parts[0] == "unet":
            depth = 2 if parts[1] in ("down_blocks", "up_blocks") else 1
            name = "unet " + ".".join(parts[1:1 + depth])
        else:
            name = parts[0]
        blocks.setdefault(name, []).append(value)
    lines = []
    for name, values in blocks.items():
        ranks = Counter(r for r, _ in values)
        alphas = Counter(a for _, a in values)
        rank = "/".join(str(r or "full") for r, _ in ranks.most_common())
        alpha = "/".join(f"{a:g}" for a, _ in alphas.most_common())
        lines.append(f"  {name}: {len(values)} modules, rank {rank}, alpha {alpha}")
    return lines
