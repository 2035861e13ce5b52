"""`loraflow score`: parse flags, call `run_score`, print the table, write JSON/chart, apply the gate."""
from __future__ import annotations

import argparse
import sys

from loraflow.score.run import GATE_EXIT_CODE, ScoreOptions


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="aesthetic score and CLIP score of images, per folder, with an optional gate",
        description="Score images with a local CLIP folder (--clip) and/or aesthetic model (--aesthetic). "
                    f"Exit code {GATE_EXIT_CODE} when a folder's mean aesthetic score is below --gate.")
    p.add_argument("images", nargs="+", metavar="IMAGES_OR_DIR", help="image files and/or folders")
    p.add_argument("--config", help="YAML/JSON file with score options")
    ScoreOptions.add_arguments(p)
    p.set_defaults(func=run_score_cmd)


def run_score_cmd(args: argparse.Namespace) -> int:
    from loraflow.progress import StepBar
    from loraflow.score.run import format_table, gate_failure, run_score, write_outputs

    options = ScoreOptions.from_cli(args, args.config, images=args.images)
    # the bar opens once the models are loaded, so loading errors are not mixed into it
    with StepBar("score", unit="img") as update:
        report = run_score(options, progress=update)
    print(format_table(report))
    for path in write_outputs(report, options):
        print(f"wrote {path}")
    failure = gate_failure(report)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return GATE_EXIT_CODE
    return 0

