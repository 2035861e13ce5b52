"""`loraflow lora info|convert`: inspect a LoRA file, or rewrite it in another layout.

Light at import time (no torch): the work is done by plain functions in `load.py`.
"""
from __future__ import annotations

import argparse
from typing import Literal, Optional

from loraflow.config import Options, opt
from loraflow.models.families import FamilyName
from loraflow.models.lora import tools_cli
from loraflow.models.lora.info import format_info


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
