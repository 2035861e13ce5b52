"""`loraflow lora resize|merge|extract`: thin shells over `tools.py` and `bake.py` (no torch at import)."""
from __future__ import annotations

import argparse
from typing import Optional

from loraflow.config import Options, opt, split_weighted
from loraflow.errors import InputError
from loraflow.models.families import get_family
from loraflow.models.loading import load_pipeline
from loraflow.models.lora.compat import check_file, format_table
from loraflow.models.lora.tools import extract_lora, format_report, merge_loras, resize_lora


def _family_name(name: Optional[str]) -> Optional[str]:
    if name is None:
        return None

    return get_family(name).name


class ResizeOptions(Options):
    rank: Optional[int] = opt(None, "new rank (with --kept-energy: the most a module may keep)")
    kept_energy: Optional[float] = opt(None, "keep per module the fewest ranks holding this share of the "
                                       "delta's squared Frobenius norm, e.g. 0.99")
    family: Optional[str] = opt(None, "model family; guessed from the file if not given")
    allow_pickle: bool = opt(False, "read a pickled .pt/.bin/.ckpt file (with torch.load(weights_only=True))")
    verbose: bool = opt(False, "print every module's line, not only the first 20")


class MergeOptions(Options):
    base: Optional[str] = opt(None, "single-file checkpoint (.safetensors) to merge the LoRAs into; "
                              "without it the LoRAs are merged into one LoRA of --rank")
    rank: Optional[int] = opt(None, "rank of the merged LoRA (LoRA-into-LoRA merge)")
    family: Optional[str] = opt(None, "model family; guessed from the first file if not given")
    allow_pickle: bool = opt(False, "read pickled LoRA files (with torch.load(weights_only=True))")


class ExtractOptions(Options):
    rank: int = opt(16, "rank of the extracted LoRA")
    text_encoders: bool = opt(False, "extract the text encoders' differences too (SD1.5/SDXL)")
    min_diff: float = opt(0.0, "ignore modules whose weights differ by at most this much (max abs)")
    allow_pickle: bool = opt(False, "read pickled single-file models (with torch.load(weights_only=True))")


def register(sub) -> None:
    """Add resize, merge and extract to the `loraflow lora` subcommands."""
    resize = sub.add_parser("resize", help="SVD a LoRA to a lower rank (fixed, or by kept energy per module)")
    resize.add_argument("input")
    resize.add_argument("output")
    ResizeOptions.add_arguments(resize)
    resize.set_defaults(func=run_resize)

    merge = sub.add_parser("merge", help="merge LoRAs into a single-file checkpoint, or into one LoRA by SVD")
    merge.add_argument("output")
    merge.add_argument("loras", nargs="+", metavar="LORA[:WEIGHT]")
    MergeOptions.add_arguments(merge)
    merge.set_defaults(func=run_merge)

    extract = sub.add_parser("extract", help="a LoRA from a fine-tuned model minus its base model")
    extract.add_argument("base", help="base model (diffusers folder or single file)")
    extract.add_argument("tuned", help="fine-tuned model of the same architecture")
    extract.add_argument("output")
    ExtractOptions.add_arguments(extract)
    extract.set_defaults(func=run_extract)
    register_check(sub)


def run_resize(args: argparse.Namespace) -> int:
    options = ResizeOptions.from_cli(args)
    rows = resize_lora(args.input, args.output, rank=options.rank, energy=options.kept_energy,
                       family=_family_name(options.family), allow_pickle=options.allow_pickle)
    print(format_report(rows, None if options.verbose else 20))
    print(f"wrote {args.output}")
    check_after_export(args.output, _family_name(options.family))
    return 0


def run_merge(args: argparse.Namespace) -> int:
    options = MergeOptions.from_cli(args)
    loras = [split_weighted(s, 1.0) for s in args.loras]
    if options.base:
        from loraflow.models.lora.bake import bake_loras
        from loraflow.models.lora.load import read_lora

        files = [(read_lora(path, allow_pickle=options.allow_pickle), weight) for path, weight in loras]
        out = bake_loras(options.base, files, args.output)
        print(f"wrote {out} ({options.base} with {len(files)} LoRA(s) merged in)")
        return 0
    if options.rank is None:
        raise InputError("lora merge: give --base CHECKPOINT (merge into a model) or --rank N (merge into one LoRA)")

    rows = merge_loras(loras, args.output, rank=options.rank, family=_family_name(options.family),
                       allow_pickle=options.allow_pickle)
    print(format_report(rows, 20))
    print(f"wrote {args.output}")
    check_after_export(args.output, _family_name(options.family))
    return 0


def run_extract(args: argparse.Namespace) -> int:

    options = ExtractOptions.from_cli(args)
    base = load_pipeline(args.base, dtype="float32", device="cpu", allow_pickle=options.allow_pickle)
    tuned = load_pipeline(args.tuned, family=base.family.name, dtype="float32", device="cpu",
                          allow_pickle=options.allow_pickle)
    components = ("unet", *base.family.text_encoder_names) if options.text_encoders else ("unet",)
    rows = extract_lora(base.pipe, tuned.pipe, args.output, rank=options.rank, family=base.family.name,
                        components=components, min_diff=options.min_diff)
    print(format_report(rows, 20))
    print(f"wrote {args.output}")

    print(format_table(check_file(args.output, family=base.family.name, pipe=base.pipe)))
    return 0


# ---- `lora info` extras ------------------------------------------------------------------------
class CheckOptions(Options):
    model: Optional[str] = opt(None, "check against this model and measure the LoRA's effect on it; without it "
                               "the keys are checked against the family's full-size architecture")
    family: Optional[str] = opt(None, "model family; guessed from the file if not given")
    size: int = opt(64, "image size (px) for the effect measurement (2 steps, seed 0)")
    store: bool = opt(True, "write the result into the file's metadata (loraflow_compat)")
    allow_pickle: bool = opt(False, "read a pickled single-file --model (with torch.load(weights_only=True))")


def register_check(sub) -> None:
    check = sub.add_parser("check", help="which tools (ComfyUI, A1111, diffusers) load every module, shape "
                                         "mismatches, and the LoRA's measured effect")
    check.add_argument("file")
    CheckOptions.add_arguments(check)
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    options = CheckOptions.from_cli(args)
    pipe, family = None, _family_name(options.family)
    if options.model:
        from loraflow.models.loading import load_pipeline

        loaded = load_pipeline(options.model, family=family, dtype="float32", device="cpu",
                               allow_pickle=options.allow_pickle)
        pipe, family = loaded.pipe, loaded.family.name
    report = check_file(args.file, family=family, pipe=pipe, size=options.size, store=options.store)
    print(format_table(report))
    return 0


def check_after_export(path, family: Optional[str]) -> None:
    """The key check, run after convert / merge / resize; printed and stored in the file."""
    from loraflow.errors import InputError

    try:
        print(format_table(check_file(path, family=family)))
    except InputError as e:  # no full-size architecture to check against: say so, the file is written
        print(f"compatibility check skipped: {e}")
