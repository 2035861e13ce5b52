"""`loraflow generate` and `loraflow storyboard`: parse flags, call the plain functions."""
from __future__ import annotations

import argparse

from loraflow.generate.options import GenerateConfig
from loraflow.generate.story import SheetCommand, StoryboardConfig
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
    SheetCommand.add_arguments(s)
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
    sheet = SheetCommand.from_cli(args)
    from loraflow.demo.identity import identity_for
    from loraflow.models.loading import DEMO

    model = config.model or load_story(config.story).model or DEMO  # no model: the demo model
    identity = identity_for(config.identity, config.clip, model == DEMO)
    if sheet.character_sheet:
        return run_character_sheet_cmd(config, sheet, identity)
    with StepBar("storyboard") as update:
        if sheet.use_sheet:
            from loraflow.train.character_lora import use_sheet

            index = use_sheet(config, sheet, progress=update, identity=identity)
        else:
            index = run_storyboard(config, progress=update, identity=identity)
    if "character_sheet" in index:
        made = index["character_sheet"]
        picks, train = ", ".join(map(str, made["picks"])), made["train"]
        print(f"{made['character']}: LoRA {made['lora']} trained on candidates {picks} "
              f"({train['steps']} steps, {train['seconds']:.0f} s)")
    print(f"{len(index['scenes'])} scenes -> {config.out}/{index['grid']} ({index['grid_size'][0]}x{index['grid_size'][1]})")
    if "contact_sheet" in index:
        sheet = index["contact_sheet"]
        low = sheet["weakest"]
        weakest = f" (weakest: scene{'s' if len(low) > 1 else ''} {', '.join(map(str, low))})" if low else ""
        print(f"scores: {config.out}/{sheet['html']}{weakest}")
    if "repair" in index:
        from loraflow.generate.story_scoring import describe_repair

        print(describe_repair(index["repair"]))
    return 0


def run_character_sheet_cmd(config: StoryboardConfig, sheet: SheetCommand, identity) -> int:
    from loraflow.generate.character_sheet import render_sheet, sheet_folder

    with StepBar("character sheet") as update:
        made = render_sheet(config, sheet, progress=update, identity=identity)
    folder = sheet_folder(config.out, made["character"])
    print(f"{len(made['candidates'])} candidates of {made['character']} -> {folder}/{made['grid']}")
    for c in made["candidates"]:
        scores = c.get("scores") or {}
        combined = "" if scores.get("combined") is None else f"  combined {scores['combined']:.3f}"
        print(f"  {c['index']}: {c['file']} (seed {c['seed']}){combined}")
    print(f"next: loraflow storyboard {config.story} --out {config.out} --use-sheet {made['character']}:PICKS")
    return 0
