"""`loraflow lora info|convert`: inspect a LoRA file, or rewrite it in another layout.

Light at import time (no torch): the work is done by plain functions in `load.py`.
"""
from __future__ import annotations

import argparse
from typing import Literal, Optional

from loraflow.config import Options, opt
from loraflow.models.families import FamilyName


class InfoOptions(Options):
    allow_pickle: bool = opt(False, "read a pickled .pt/.bin/.ckpt file (with torch.load(weights_only=True))")


class ConvertOptions(Options):
    to: Literal["kohya", "diffusers", "peft"] = opt("kohya", "output layout: kohya (A1111/ComfyUI), diffusers, "
                                                    "peft (UNet only)")
    family: Optional[FamilyName] = opt(None, "model family; guessed from the file if not given")
    allow_pickle: bool = opt(False, "read a pickled .pt/.bin/.ckpt file (with torch.load(weights_only=True))")


def register(subparsers) -> None:
    p = subparsers.add_parser("lora", help="inspect or convert LoRA files (kohya, diffusers, peft)")
    sub = p.add_subparsers(dest="lora_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="format, ranks, alphas, targets and training metadata of a LoRA file")
    info.add_argument("file")
    InfoOptions.add_arguments(info)
    info.set_defaults(func=run_info)

    convert = sub.add_parser("convert", help="rewrite a LoRA file in another layout (weights unchanged)")
    convert.add_argument("input")
    convert.add_argument("output")
    ConvertOptions.add_arguments(convert)
    convert.set_defaults(func=run_convert)


def run_info(args: argparse.Namespace) -> int:
    from loraflow.models.lora.load import read_lora

    options = InfoOptions.from_cli(args)
    print(format_info(read_lora(args.file, allow_pickle=options.allow_pickle)))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from loraflow.models.lora.load import convert_lora

    options = ConvertOptions.from_cli(args)
    out = convert_lora(args.input, args.output, to=options.to, family=options.family,
                       allow_pickle=options.allow_pickle)
    print(f"wrote {out} ({options.to})")
    return 0


def format_info(lora) -> str:
    """Text for `lora info`: one `key: value` line per fact, then the training metadata."""
    from collections import Counter

    from loraflow.models.lora.load import guess_family

    modules = lora.modules()
    ranks = Counter(r for r, _ in modules.values())
    alphas = Counter(a for _, a in modules.values())
    targets = sorted({t.split(".")[0] + ":" + _short_target(t) for t in modules})
    counts = Counter(t.split(".")[0] for t in modules)
    lines = [
        f"file:        {lora.name}",
        f"format:      {lora.format}",
        f"family:      {guess_family(lora) or 'unknown'}",
        f"rank:        {_counted(ranks)}",
        f"alpha:       {_counted(alphas)}",
        "modules:     " + ", ".join(f"{c} {n}" for c, n in counts.items()),
        f"keys:        unet {_keys(lora, 'unet')}, text encoders {len(lora.state_dict) - _keys(lora, 'unet')}",
        f"targets:     {', '.join(targets)}",
    ]
    meta = {k: v for k, v in sorted(lora.metadata.items())
            if k.startswith(("ss_", "sshs_", "modelspec.")) or k == "lora_adapter_metadata"}
    if meta:
        lines.append("metadata:")
        lines += [f"  {k}: {_clip(v)}" for k, v in meta.items()]
    return "\n".join(lines)


def _keys(lora, component: str) -> int:
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
