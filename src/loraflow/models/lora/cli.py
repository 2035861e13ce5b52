"""`loraflow lora info|convert`: inspect a LoRA file, or rewrite it in another layout.

Light at import time (no torch): the work is done by plain functions in `load.py`.
"""
from __future__ import annotations

import argparse
from collections import Counter
from typing import Literal, Optional

from loraflow.config import Options, opt
from loraflow.models.families import FamilyName
from loraflow.models.lora import tools_cli


class InfoOptions(Options):
    allow_pickle: bool = opt(False, "read a pickled .pt/.bin/.ckpt file (with torch.load(weights_only=True))")


class ConvertOptions(Options):
    to: Literal["kohya", "diffusers", "peft"] = opt("kohya", "output layout: kohya (A1111/ComfyUI), diffusers, "
                                                    "peft (UNet only)")
    family: Optional[FamilyName] = opt(None, "model family; guessed from the file if not given")
    allow_pickle: bool = opt(False, "read a pickled .pt/.bin/.ckpt file (with torch.load(weights_only=True))")
    lora_alpha: Optional[float] = opt(None, "DiffSynth-Studio input: the lora_alpha it was trained with "
                                      "(scale alpha/rank; the 1.x tutorial's default is 4)")
    lora_scale: Optional[float] = opt(None, "DiffSynth-Studio input: the lora_alpha given to DiffSynth's loader "
                                      "(it multiplies B@A as is)")


def register(subparsers) -> None:
    p = subparsers.add_parser("lora", help="inspect or convert LoRA files (kohya, diffusers, peft, LyCORIS, "
                                          "DiffSynth-Studio)")
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
    tools_cli.register(sub)  # resize, merge, extract


def run_info(args: argparse.Namespace) -> int:
    from loraflow.models.lora.load import read_lora

    options = InfoOptions.from_cli(args)
    print(format_info(read_lora(args.file, allow_pickle=options.allow_pickle)))
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from loraflow.models.lora.load import convert_lora

    from loraflow.models.lora.diffsynth import convert_diffsynth

    options = ConvertOptions.from_cli(args)
    out = convert_diffsynth(args.input, args.output, family=options.family, lora_alpha=options.lora_alpha,
                            lora_scale=options.lora_scale, allow_pickle=options.allow_pickle)
    if out is not None:  # DiffSynth-Studio LoRAs become kohya files, then any other layout
        if options.to != "kohya":
            out = convert_lora(out, out, to=options.to, family=options.family)
        print(f"wrote {out} ({options.to}, from DiffSynth-Studio)")
        tools_cli.check_after_export(out, options.family)
        return 0
    out = convert_lora(args.input, args.output, to=options.to, family=options.family,
                       allow_pickle=options.allow_pickle)
    print(f"wrote {out} ({options.to})")
    tools_cli.check_after_export(out, options.family)
    return 0


def format_info(lora) -> str:
    """Text for `lora info`: one `key: value` line per fact, then the training metadata."""
    from loraflow.models.lora.load import guess_family

    modules = lora.modules()
    ranks = Counter(r for r, _ in modules.values())
    alphas = Counter(a for _, a in modules.values())
    targets = sorted({t.split(".")[0] + ":" + _short_target(t) for t in modules})
    counts = Counter(t.split(".")[0] for t in modules)
    lines = [
        f"file:        {lora.name}",
        f"format:      {lora.format}",
        f"type:        {_types(lora)}",
        f"family:      {guess_family(lora) or 'unknown'}",
        f"rank:        {_counted(ranks)}",
        f"alpha:       {_counted(alphas)}",
        "modules:     " + ", ".join(f"{c} {n}" for c, n in counts.items()),
        f"keys:        unet {_keys(lora, 'unet')}, text encoders {len(lora.state_dict) - _keys(lora, 'unet')}",
        f"targets:     {', '.join(targets)}",
        f"base model:  {tools_cli.base_model_line(lora.metadata)}",
        "blocks:",
        *tools_cli.block_table(modules),
    ]
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
