"""`loraflow generate` and `loraflow storyboard`: parse flags, call the plain functions."""
from __future__ import annotations

import argparse

from loraflow.generate.options import GenerateConfig
from loraflow.generate.story import StoryboardConfig
from loraflow.progress import StepBar


def register(subparsers) -> None:
    p = subparsers.add_parser("generate", help="text-to-image with optional LoRAs; PNGs carry A1111 infotext",
                              description="Generate images. Flags override values from --config.")
    p.add_argument("--config", help="YAML/JSON file with generate options")
    GenerateConfig.add_arguments(p)
    p.set_defaults(func=run_generate)

    s = subparsers.add_parser("storyboard", help="a story file -> one image per scene + grid + story.json",
                              description="Render a story. Flags override the story's defaults.")
    s.add_argument("story", help="story file (.yaml or .json), e.g. examples/stories/cat-time-travel.zh.yaml")
    StoryboardConfig.add_arguments(s)
    s.set_defaults(func=run_storyboard_cmd)


def run_generate(args: argparse.Namespace) -> int:
    from loraflow.generate.session import GenerationSession, save_results

    from loraflow.generate.plan import stop_if_over_free_memory
    from loraflow.models.loading import resolve_device

    config = GenerateConfig.from_cli(args, args.config).require_prompt()
    stop_if_over_free_memory(config, resolve_device(config.device))  # CUDA: before the model loads
    session = GenerationSession.from_options(config)
    with StepBar("generate") as update:
        results = session.generate(config, progress=update)
    for path in save_results(results, config.out):
        print(path)
    return 0


def run_storyboard_cmd(args: argparse.Namespace) -> int:
    from loraflow.generate.storyboard import load_story, run_storyboard

    config = StoryboardConfig.from_cli(args, None, story=args.story)
    from loraflow.demo.identity import identity_for
    from loraflow.models.loading import DEMO

    model = config.model or load_story(config.story).model or DEMO  # no model: the demo model
    identity = identity_for(config.identity, config.clip, model == DEMO)
    with StepBar("storyboard") as update:
        index = run_storyboard(config, progress=update, identity=identity)
    print(f"{len(index['scenes'])} scenes -> {config.out}/{index['grid']} ({index['grid_size'][0]}x{index['grid_size'][1]})")
    if "contact_sheet" in index:
        sheet = index["contact_sheet"]
        weakest = f" (weakest: scene {sheet['weakest']})" if sheet["weakest"] else ""
        print(f"scores: {config.out}/{sheet['html']}{weakest}")
    if "repair" in index:
        from loraflow.generate.story_scoring import describe_repair

        print(describe_repair(index["repair"]))
    return 0

