"""`loraflow data ingest|filter|export|stats`: thin shells over plain functions.

Only argparse and the option models are imported here; each command imports its work when it runs.
"""
from __future__ import annotations

import argparse

from loraflow.data.options import ExportOptions, FilterOptions, IngestOptions, StatsOptions


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare a training set: ingest, filter, export, stats",
                                 description="Raw images -> metadata.jsonl -> filtered (data-juicer recipe) -> training folder.")
    data.set_defaults(func=lambda args: data.print_help() or 0)
    steps = data.add_subparsers(dest="data_command", metavar="STEP")

    p = steps.add_parser("ingest", help="images from a folder, manifest, hf:NAME or ms:NAME -> RGB + metadata.jsonl")
    p.add_argument("source", help="folder, .jsonl/.csv manifest, hf:NAME[:split] or ms:NAME (e.g. ms:AI-ModelScope/lowres_anime)")
    IngestOptions.add_arguments(p)
    p.set_defaults(func=_ingest)

    p = steps.add_parser("filter", help="run a data-juicer recipe (kept / rejected / errored JSONL)")
    FilterOptions.add_arguments(p)
    p.set_defaults(func=_filter)

    p = steps.add_parser("export", help="kept samples -> diffsynth / imagefolder / kohya training folder")
    p.add_argument("result", help="data-juicer JSONL of kept samples (export_path of the recipe)")
    ExportOptions.add_arguments(p)
    p.set_defaults(func=_export)

    p = steps.add_parser("stats", help="counts and distributions, as text and a PNG of histograms")
    p.add_argument("dataset", help="data-juicer JSONL, an exported folder, or a folder of images")
    StatsOptions.add_arguments(p)
    p.set_defaults(func=_stats)


def _ingest(args: argparse.Namespace) -> int:
    from loraflow.data.ingest_run import ingest

    opts = IngestOptions.from_cli(args, source=args.source)
    result = ingest(opts)
    for note in result.notes:
        print(f"note: {note}")
    for row in result.errored[:5]:
        print(f"errored: {row['error']}")
    print(f"ingest: {result.summary()} -> {opts.out}/metadata.jsonl")
    return 0


def _filter(args: argparse.Namespace) -> int:
    from loraflow.data.filter_run import filter_with_options

    result = filter_with_options(FilterOptions.from_cli(args))
    for op, n in result.rejected_by.items():
        print(f"  {op}: {n} rejected")
    print(f"filter: {result.summary()}")
    print("  " + "; ".join(f"{what} -> {path}" for what, path in result.outputs.items()))
    return 0


def _export(args: argparse.Namespace) -> int:
    from loraflow.data.export_run import export

    opts = ExportOptions.from_cli(args, result=args.result)
    result = export(opts)
    print(f"export: {result.summary()}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from loraflow.data.stats_plot import stats_with_plot

    stats, _, path = stats_with_plot(StatsOptions.from_cli(args, dataset=args.dataset))
    print(stats.table())
    print(f"histograms: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m loraflow.data.cli data ...`: the data commands alone (used by bench/filter.py)."""
    import sys

    from loraflow.errors import LoraflowError

    parser = argparse.ArgumentParser(prog="loraflow")
    register(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except LoraflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
