"""`loraflow generate` and `loraflow storyboard`: parse flags, call the plain functions."""
from __future__ import annotations

import argparse

from loraflow.generate.options import GenerateConfig
from loraflow.generate.storyboard import StoryboardConfig


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


class _StepBar:
    """A tqdm bar opened at the first step, so notices printed while the model loads or prompts are
    encoded (unknown words, the demo model) come before it instead of through it."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="step")
        self.bar.total = total  # a storyboard with best-of or references may learn its total late
        self.bar.update(done - self.bar.n)  # tqdm's own rate and ETA

    def __enter__(self) -> "_StepBar":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def run_generate(args: argparse.Namespace) -> int:
    from loraflow.generate.session import GenerationSession, save_results

    config = GenerateConfig.from_cli(args, args.config)
    if not config.prompt:
        from loraflow.errors import ConfigError

        raise ConfigError("no prompt: pass --prompt TEXT")
    session = GenerationSession.from_options(config)
    with _StepBar("generate") as update:
        results = session.generate(config, progress=update)
    for path in save_results(results, config.out):
        print(path)
    return 0


def run_storyboard_cmd(args: argparse.Namespace) -> int:
    from loraflow.generate.storyboard import run_storyboard

    config = StoryboardConfig.from_cli(args, None, story=args.story)
    with _StepBar("storyboard") as update:
        index = run_storyboard(config, progress=update)
    print(f"{len(index['scenes'])} scenes -> {config.out}/{index['grid']} ({index['grid_size'][0]}x{index['grid_size'][1]})")
    return 0
