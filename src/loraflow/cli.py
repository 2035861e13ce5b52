"""The `loraflow` command: a thin shell. Each package registers its own sub-commands
(`register(subparsers)` in its `cli.py`) and does its heavy imports only when a command runs,
so `loraflow --help` never imports torch."""
from __future__ import annotations

import argparse
import errno
import importlib
import re
import sys

from loraflow import __version__
from loraflow.errors import LoraflowError
from loraflow.quiet import silence_third_party

# Modules that add sub-commands, in the order they appear in `--help`.
COMMAND_MODULES = (
    "loraflow.data.cli",  # data ingest|filter|export|stats
    "loraflow.generate.cli",  # generate, storyboard
    "loraflow.train.cli",  # train
    "loraflow.plan.cli",  # plan train|generate|storyboard
    "loraflow.models.cli",  # models info|download
    "loraflow.models.lora.cli",  # lora info|convert
    "loraflow.score.cli",  # score
    "loraflow.serve.cli",  # serve, workflow export
    "loraflow.demo.cli",  # demo dataset|eval
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loraflow",
        description="Raw images -> filtered data -> LoRA -> pictures and stories (Kolors, SDXL, SD1.5).",
    )
    parser.add_argument("--version", action="version", version=f"loraflow {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="also show third-party libraries' logs, warnings and loading bars "
                             "(accepted after the command too: `loraflow generate ... --verbose`)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


_UNDERSCORE_FLAG = re.compile(r"^--[a-z0-9]+(_[a-z0-9]+)+(=.*)?$", re.S)


def normalize_flags(argv: list[str]) -> list[str]:
    """Accept the tutorial's spelling `--lora_rank 16` for `--lora-rank 16` (only flag names change)."""
    out = []
    for arg in argv:
        if _UNDERSCORE_FLAG.match(arg):
            name, eq, value = arg.partition("=")
            arg = name.replace("_", "-") + eq + value
        out.append(arg)
    return out


# OSErrors about a path the user gave: one line naming it (any other OSError is a bug and keeps its traceback)
USER_PATH_ERRORS = (errno.EEXIST, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EROFS, errno.ENOENT,
                    errno.ENAMETOOLONG)


def main(argv: list[str] | None = None) -> int:
    argv = normalize_flags(sys.argv[1:] if argv is None else argv)
    # one flag for every command, wherever it is written (sub-commands do not each declare it)
    verbose = "--verbose" in argv
    parser = build_parser()
    args = parser.parse_args([a for a in argv if a != "--verbose"])
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    silence_third_party(verbose)
    try:
        result = args.func(args)
    except LoraflowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            # atomic writes leave the previous file (or checkpoint) in place; say what to do, no traceback
            print(f"error: disk full while writing {e.filename or 'a file'}: free some space and run again "
                  "(training: --resume latest continues from the last checkpoint)", file=sys.stderr)
            return 2
        if e.errno in USER_PATH_ERRORS and e.filename:  # e.g. --out naming an existing file
            print(f"error: {e.filename}: {e.strerror}", file=sys.stderr)
            return 2
        raise
    except MemoryError:
        print("error: out of memory; use smaller images, batches or grids", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
