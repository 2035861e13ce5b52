"""`loraflow plan train|generate|storyboard`: the memory and time a command would need, at full size,
without a GPU and without weights. Same options and config files as the real command, plus:

    --gpu NAME|GiB   the card to fit and time against (default: RTX 4090)
    --vram GiB       pick the fastest set of low-VRAM modes that fits this size
    --json           one JSON object instead of the report
"""
from __future__ import annotations

import argparse
import json

DEFAULT_GPU = "RTX 4090"


def _common(parser, vram: bool) -> None:
    parser.add_argument("--gpu", default=DEFAULT_GPU, help=f"GPU name or memory size in GiB (default: {DEFAULT_GPU})")
    parser.add_argument("--efficiency", type=float, default=None,
                        help="fraction of the GPU's peak TFLOPs a step reaches (default: 0.40)")
    parser.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    if vram:
        parser.add_argument("--vram", type=float, help="GiB to fit: choose the fastest low-VRAM modes that fit")


def register(subparsers) -> None:
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.storyboard import StoryboardConfig
    from loraflow.train.config import TrainConfig

    plan = subparsers.add_parser("plan", help="peak GPU memory, FLOPs and step time of a command, without a GPU",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = plan.add_subparsers(dest="plan_command", metavar="COMMAND", required=True)
    t = commands.add_parser("train", help="plan `loraflow train` (one optimizer step, cache pass, validation)")
    t.add_argument("--config", help="the training config file")
    TrainConfig.add_arguments(t)
    _common(t, vram=False)  # TrainConfig has --vram
    t.set_defaults(func=run_train)
    g = commands.add_parser("generate", help="plan `loraflow generate` (text encoding, one step, VAE decode)")
    g.add_argument("--config", help="the generate config file")
    GenerateConfig.add_arguments(g)
    _common(g, vram=True)
    g.set_defaults(func=run_generate)
    s = commands.add_parser("storyboard", help="plan `loraflow storyboard` (its largest scene)")
    s.add_argument("story", help="story file (.yaml or .json)")
    StoryboardConfig.add_arguments(s)
    _common(s, vram=True)
    s.set_defaults(func=run_storyboard)


def _finish(plan, args) -> int:
    from loraflow.plan.report import format_plan

    plan = with_gpu(plan, args.gpu, args.efficiency)
    print(json.dumps(plan.to_dict(), indent=2) if args.json else format_plan(plan))
    return 0


def with_gpu(plan, gpu: str = DEFAULT_GPU, efficiency: float | None = None):
    """`plan` timed and fitted against `gpu` (a name or a size in GiB)."""
    from loraflow.plan.gpus import find_gpu

    plan.gpu = find_gpu(gpu)
    if efficiency is not None:
        plan.efficiency = efficiency
    return plan


def plan_train_config(config):
    """The plan of `loraflow train` with `config`; with `config.vram`, of the fastest modes that fit it."""
    from loraflow.plan.modes import TRAIN_STEPS, budget_from_vram, choose, flags
    from loraflow.train.plan import plan_train

    if config.vram is None:
        return plan_train(config)
    config, plan, changes = choose(config, budget_from_vram(config.vram), plan_train, TRAIN_STEPS)
    plan.notes.insert(0, f"modes chosen for --vram {config.vram:g}: {flags(changes) or 'none needed'}")
    return plan


def plan_generate_config(config, vram: float | None = None):
    """The plan of `loraflow generate` with `config`; with `vram`, of the fastest modes that fit it."""
    from loraflow.generate.plan import plan_generate
    from loraflow.plan.modes import GENERATE_STEPS, budget_from_vram, choose, flags

    if vram is None:
        return plan_generate(config)
    config, plan, changes = choose(config, budget_from_vram(vram), plan_generate, GENERATE_STEPS)
    plan.notes.insert(0, f"modes chosen for --vram {vram:g}: {flags(changes) or 'none needed'}")
    return plan


def plan_storyboard_config(cfg, vram: float | None = None):
    """The plan of `loraflow storyboard`: its largest scene, on the one loaded model."""
    from loraflow.generate.plan import largest_scene
    from loraflow.generate.storyboard import load_story, scene_configs

    scenes = scene_configs(load_story(cfg.story), cfg)
    plan = plan_generate_config(largest_scene(scenes, cfg), vram)
    plan.command = "storyboard"
    plan.notes.append(f"the largest of {len(scenes)} scenes; every scene runs on the same loaded model")
    return plan


def run_train(args: argparse.Namespace) -> int:
    from loraflow.plan.gpus import find_gpu
    from loraflow.train.config import TrainConfig

    find_gpu(args.gpu)  # an unknown name fails before minutes of planning
    return _finish(plan_train_config(TrainConfig.from_cli(args, args.config)), args)


def run_generate(args: argparse.Namespace) -> int:
    from loraflow.generate.options import GenerateConfig
    from loraflow.plan.gpus import find_gpu

    find_gpu(args.gpu)
    return _finish(plan_generate_config(GenerateConfig.from_cli(args, args.config), args.vram), args)


def run_storyboard(args: argparse.Namespace) -> int:
    from loraflow.generate.storyboard import StoryboardConfig
    from loraflow.plan.gpus import find_gpu

    find_gpu(args.gpu)
    cfg = StoryboardConfig.from_cli(args, None, story=args.story)
    return _finish(plan_storyboard_config(cfg, args.vram), args)
