"""`loraflow models info|download|tiny`: inspect, fetch (network users) or write tiny models."""
from __future__ import annotations

import argparse

from loraflow.models.families import FAMILIES  # torch-free: `loraflow --help` stays light


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="inspect, download or create models")
    sub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    info = sub.add_parser("info", help="family, components and hash of a model folder or checkpoint")
    info.add_argument("model")
    info.add_argument("--family", choices=tuple(FAMILIES))
    info.set_defaults(func=run_info)

    dl = sub.add_parser("download", help="download a model from a hub (needs a network; never used by tests)")
    dl.add_argument("repo_id", help="e.g. Kwai-Kolors/Kolors-diffusers or stabilityai/stable-diffusion-xl-base-1.0")
    dl.add_argument("--out", default=None, help="target folder (default: models/<name>)")
    dl.add_argument("--hub", choices=("huggingface", "modelscope"), default="huggingface")
    dl.add_argument("--revision", default=None)
    dl.set_defaults(func=run_download)

    tiny = sub.add_parser("tiny", help="write a tiny random model of a family as a diffusers folder (for tests)")
    tiny.add_argument("family", choices=tuple(FAMILIES))
    tiny.add_argument("--out", required=True)
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=run_tiny)


def run_info(args: argparse.Namespace) -> int:
    from pathlib import Path

    from loraflow.errors import ModelLoadError
    from loraflow.models.families import get_family
    from loraflow.models.hashing import model_hash
    from loraflow.models.loading import check_folder, detect_folder_family

    path = Path(args.model)
    if not path.exists():
        raise ModelLoadError(f"model not found: {args.model}")
    if path.is_dir():
        family = args.family or detect_folder_family(path)
        if family is None:
            raise ModelLoadError(f"{path}: cannot tell the model family; pass --family")
        check_folder(path, get_family(family), allow_pickle=True)
        components = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    else:
        from loraflow.models.single_file import detect_checkpoint_family

        family = args.family or detect_checkpoint_family(path)
        components = ["single-file checkpoint"]
    print(f"model:      {path}")
    print(f"family:     {family}")
    print(f"components: {', '.join(components)}")
    print(f"hash:       {model_hash(path)}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from loraflow.models.download import download_model

    print(download_model(args.repo_id, args.out, hub=args.hub, revision=args.revision))
    return 0


def run_tiny(args: argparse.Namespace) -> int:
    from loraflow.models.tiny import save_tiny_model

    print(save_tiny_model(args.family, args.out, seed=args.seed))
    return 0
