"""A quick character LoRA from a few picked portraits (`storyboard --use-sheet NAME[:PICKS]`).

    use_sheet(config, sheet)   # picks -> training set -> LoRA -> the story rendered with it (story.json says so)

The picked files are exported as a training set with the data step's own exporter (DiffSynth layout:
dataset/train/0.jpg ... + metadata.csv; the caption, given by the caller, is the character's trigger
word and description plus the sheet's framing), then trained with `loraflow.train` under small
defaults that story options and flags override:

    story `sheet_training:` (any `loraflow train` option) < --sheet-steps / --sheet-rank / --sheet-learning-rate

The defaults are a shorter run of diffusers' DreamBooth-LoRA recipe for 3-5 subject images
(`examples/dreambooth/README_sdxl.md`: lr 1e-4 constant, 500 steps of batch 1 x 4 accumulation; the
script's default rank is 4): rank 8, alpha = rank (the update is not scaled down), lr 1e-4, 300 steps of
batch 1, so a sheet LoRA takes minutes, not an hour. The resolution is the portraits' own size (the story's
panel size). A small model overfits sooner: the demo story sets 100 steps (see examples/stories/demo-cast.yaml).
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from loraflow.data.export_run import export
from loraflow.data.jsonl import write_jsonl
from loraflow.data.options import ExportOptions
from loraflow.errors import ConfigError, InputError
from loraflow.generate import character_sheet as sheets
from loraflow.generate.story import SheetCommand, StoryboardConfig
from loraflow.generate.storyboard import load_story, run_storyboard
from loraflow.images import read_info
from loraflow.models.hashing import sha256_file
from loraflow.train.config import TrainConfig
from loraflow.train.trainer import train

PLACED_BY_THE_SHEET = ("dataset", "output", "name", "resume")  # what the picks and the sheet folder decide
SHEET_TRAINING_DEFAULTS = {"lora_rank": 8, "lora_alpha": 8.0, "max_steps": 300, "learning_rate": 1e-4,
                           "batch_size": 1}


@dataclass
class CharacterLora:
    lora_path: Path  # FOLDER/NAME.safetensors
    dataset: Path  # the exported training folder (FOLDER/dataset/train, with metadata.csv)
    rows: list[tuple[str, str]]  # (exported file name, caption), in the order of `images`
    steps: int
    seconds: float  # wall time of the training run
    final_loss: float | None


def character_train_config(images: list[Path], folder: Path, name: str, model: str | None, device: str,
                           seed: int, story_options: dict, overrides: dict) -> TrainConfig:
    """Defaults < the story's `sheet_training` < flags; the files always go to `folder`. Validated before
    anything is written, with errors naming the `sheet_training` key."""
    info = read_info(images[0])
    base = {**SHEET_TRAINING_DEFAULTS, "resolution": max(64, math.isqrt(info.width * info.height)),
            "seed": seed, "device": device, **({"model": model} if model else {})}
    config = TrainConfig.from_dict(base, "sheet_training")
    if story_options:
        config = config.merged(story_options, "sheet_training")
        placed = sorted(config.model_fields_set & set(PLACED_BY_THE_SHEET))
        if placed:
            raise ConfigError(f"sheet_training.{placed[0]}: --use-sheet trains on the sheet's picks and writes "
                              "into OUT/sheets/NAME/train-PICKS/; leave it out")
    if overrides:
        config = config.merged(overrides, "--use-sheet")
    return config.merged({"dataset": str(folder / "dataset"), "output": str(folder), "name": name}, "--use-sheet")


def train_character_lora(images: list[Path], caption: str, folder: Path, *, name: str, model: str | None = None,
                         device: str = "auto", seed: int = 0, story_options: dict | None = None,
                         overrides: dict | None = None, progress=None) -> CharacterLora:
    """Export `images` (each captioned `caption`) into FOLDER/dataset and train FOLDER/NAME.safetensors on them."""
    config = character_train_config(images, folder, name, model, device, seed, story_options or {}, overrides or {})
    folder.mkdir(parents=True, exist_ok=True)
    dataset = folder / "dataset"
    if dataset.exists():  # the picks' copy from an earlier run of the same picks; the sheet's files stay
        shutil.rmtree(dataset)
    manifest = folder / "picks.jsonl"  # the exporter's input: data-juicer's {text, image: [path]} lines
    write_jsonl(manifest, ({"text": caption, "image": [str(Path(p).resolve())]} for p in images))
    exported = export(ExportOptions(result=str(manifest), out=str(dataset), format="diffsynth", progress=False))
    if exported.errored:
        raise InputError(f"--use-sheet: a picked candidate could not be exported: {exported.errored[0]['error']}")
    started = time.perf_counter()
    result = train(config, progress=progress)
    return CharacterLora(result.lora_path, exported.folder, exported.written, result.steps,
                         time.perf_counter() - started, result.losses[-1][1] if result.losses else None)


def use_sheet(config: StoryboardConfig, sheet: SheetCommand, session=None, progress=None, identity=None) -> dict:
    """--use-sheet NAME[:PICKS]: train the character's LoRA on the picked candidates of its sheet, then render
    the story with it; story.json's `character_sheet` says which LoRA (file, SHA-256) from which picks."""
    story = load_story(config.story)
    name, picks = sheets.parse_use_sheet(sheet.use_sheet)
    character = sheets.find_character(story, name, "--use-sheet")
    made = sheets.read_sheet(config.out, name)
    chosen = sheets.chosen_candidates(made, picks, story.sheet.top)
    folder = sheets.sheet_folder(config.out, name)
    numbers = [c["index"] for c in chosen]
    lora = train_character_lora(
        [folder / c["file"] for c in chosen], sheets.training_caption(story, character, made.get("language", "en")),
        folder / ("train-" + "-".join(map(str, numbers))), name=name, model=config.model or story.model,
        device=config.device, seed=story.defaults.seed, story_options=story.sheet_training,
        overrides=sheet.training_overrides())
    record = {"character": name, "lora": str(lora.lora_path), "sha256": sha256_file(lora.lora_path),
              "picks": numbers, "files": [c["file"] for c in chosen], "seeds": [c["seed"] for c in chosen],
              "picked_by": "picks" if picks is not None else ("score" if sheets.is_scored(made) else "all"),
              "dataset": str(lora.dataset / "metadata.csv"),
              "train": {"steps": lora.steps, "seconds": round(lora.seconds, 2), "final_loss": lora.final_loss}}
    return run_storyboard(config, session=session, progress=progress, identity=identity,
                          story=sheets.with_character_lora(story, name, lora.lora_path),
                          notes={"character_sheet": record})
