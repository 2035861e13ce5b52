"""Character sheets: candidate portraits of one character, and the choice of those a LoRA trains on.

`loraflow storyboard STORY --character-sheet NAME [--candidates K]` draws K portraits of the character
(the story's style, the character's words, then the story's `sheet.framing`; seeds seed, seed+1, ...)
into OUT/sheets/NAME/: candidate-01.png ... (A1111 infotext, as every output), grid.png (numbered, so
a person can pick) and sheet.json (prompt, seeds, files, and scores when the story's scorer is at hand).

`--use-sheet NAME[:PICKS]` reads that sheet back: `chosen_candidates` says which portraits the character
LoRA trains on, `with_character_lora` puts the trained LoRA into the story. Training is a layer above
(`loraflow.train.character_lora`); the `storyboard` command shell joins the two.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from loraflow.atomic import atomic_save_image, atomic_write_text, check_outputs_apart
from loraflow.errors import ConfigError, InputError
from loraflow.generate import story_scoring as scoring
from loraflow.generate.cast import Character, scene_language
from loraflow.generate.grid import make_grid
from loraflow.generate.session import GenerationSession, ProgressFn, save_results
from loraflow.generate.story import Scene, SheetCommand, Story, StoryboardConfig, load_story, scene_configs

SHEET_FILE = "sheet.json"
GRID_COLUMNS = 4  # a sheet of 4 reads as one row, 8 as two


def sheet_folder(out: str | Path, name: str) -> Path:
    """OUT/sheets/NAME; a character name that is not one plain folder name (`a/b`, `..`) is refused."""
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ConfigError(f"character '{name}': a sheet is written to sheets/NAME/, so the name must be a plain "
                          "folder name (no '/', '\\', '.' or '..')")
    return Path(out) / "sheets" / name


def find_character(story: Story, name: str, flag: str) -> Character:
    for c in story.characters:
        if c.name == name:
            return c
    known = ", ".join(c.name for c in story.characters) or "none defined"
    raise ConfigError(f"{flag}: unknown character '{name}' (characters: {known})")


def sheet_language(story: Story, character: Character) -> str:
    """The story's language, else zh for a character whose words are Chinese, else en."""
    return story.language or scene_language(character.words("en"), None)


def training_caption(story: Story, character: Character, language: str) -> str:
    """What a portrait of the sheet is captioned with for training: the character's words (trigger and
    description) and the framing. The framing is named so that the LoRA ties the plain background and the
    pose to those words, not to the trigger: the story's panels put the character elsewhere."""
    return ",".join(p for p in (character.words(language), story.sheet.framing_words(language)) if p)


def sheet_item(story: Story, cfg: StoryboardConfig, character: Character):
    """(GenerateConfig, PanelCast) of one portrait: a one-scene copy of the story whose scene is the
    character and the framing, so style, negative prompt, size, steps, LoRAs and flags apply as to a panel."""
    language = sheet_language(story, character)
    framing = story.sheet.framing_words(language)
    prompt = ",".join(p for p in ("{" + character.name + "}", framing) if p)
    scene = Scene(title=f"{character.name} sheet", prompt=prompt)
    one = story.model_copy(update={"scenes": [scene], "language": language})
    [item] = scene_configs(one, cfg)
    [cast] = one.panel_casts()
    return item, cast


def render_sheet(cfg: StoryboardConfig, cmd: SheetCommand, session: GenerationSession | None = None,
                 progress: ProgressFn | None = None, scorer=None, identity=None, story: Story | None = None) -> dict:
    """Render the candidates, their grid and sheet.json into OUT/sheets/NAME/; returns the sheet.json dict."""
    story = story if story is not None else load_story(cfg.story)
    character = find_character(story, cmd.character_sheet, "--character-sheet")
    folder = sheet_folder(cfg.out, character.name)
    k = cmd.candidates or story.sheet.candidates
    item, cast = sheet_item(story, cfg, character)
    stems = [f"candidate-{j:02d}" for j in range(1, k + 1)]
    check_outputs_apart([folder / f"{s}.png" for s in stems] + [folder / "grid.png", folder / SHEET_FILE],
                        {"story": cfg.story, **{f"references.{j}": p for j, p in enumerate(character.references)}},
                        "storyboard --character-sheet")
    panels = scoring.panel_scorer(cfg, [cast], scorer, identity)
    if session is None:  # on CUDA, a sheet whose plan exceeds the free memory stops here with one line
        from loraflow.generate.plan import largest_scene, stop_if_over_free_memory  # the planner imports torch
        from loraflow.models.loading import resolve_device

        stop_if_over_free_memory(largest_scene([item], cfg), resolve_device(cfg.device))
        session = GenerationSession.from_options(cfg.model_copy(update={"model": cfg.model or story.model}))
    # 1. K seeds from the story's seed, as --best-of counts them
    results = scoring.render_candidates(session, item, [item.seed + j for j in range(k)], cfg, progress)
    for stem, result in zip(stems, results):
        save_results([result], folder, stem=stem)
    # 2. scores, when the story's scorer is at hand (the identity of each candidate against the character)
    scores = panels.score(0, [r.image for r in results], item.prompt) if panels is not None else [None] * k
    # 3. a numbered grid to pick from, and the index --use-sheet reads
    grid = make_grid([r.image for r in results], min(GRID_COLUMNS, k), None,
                     [str(j) for j in range(1, k + 1)])  # the numbers --use-sheet picks by
    atomic_save_image(grid, folder / "grid.png")
    sheet = {"character": character.name, "model": session.loaded.name, "prompt": item.prompt,
             "negative_prompt": item.negative_prompt, "caption": training_caption(story, character, cast.language),
             "language": cast.language, "seeds": [r.seed for r in results], "grid": "grid.png",
             "candidates": [{"index": j, "seed": r.seed, "file": r.path.name, **({"scores": s} if s else {})}
                            for j, (r, s) in enumerate(zip(results, scores), 1)]}
    if panels is not None and panels.identity is not None:
        sheet["identity"] = {"scorer": panels.identity.name, "anchored_by": panels.anchored_by.get(character.name)}
    atomic_write_text(folder / SHEET_FILE, json.dumps(sheet, ensure_ascii=False, indent=2))
    return sheet


def parse_use_sheet(value: str) -> tuple[str, list[int] | None]:
    """`NAME` or `NAME:1,3,4` -> (name, 1-based picks or None)."""
    name, _, picks = value.partition(":")
    if not name:
        raise ConfigError(f"--use-sheet '{value}': give NAME or NAME:PICKS, e.g. kitten:1,3,4")
    if not picks:
        return name, None
    try:
        numbers = [int(p) for p in picks.split(",")]
    except ValueError:
        raise ConfigError(f"--use-sheet '{value}': picks are candidate numbers separated by commas, "
                          "e.g. kitten:1,3,4") from None
    if len(set(numbers)) != len(numbers):
        raise ConfigError(f"--use-sheet '{value}': a candidate is picked twice")
    return name, numbers


def read_sheet(out: str | Path, name: str) -> dict:
    """The sheet.json `--character-sheet NAME` wrote into `out`; a one-line error when there is none."""
    path = sheet_folder(out, name) / SHEET_FILE
    if not path.is_file():
        raise InputError(f"--use-sheet {name}: no sheet at {path}; render it first with "
                         f"`loraflow storyboard STORY --out {out} --character-sheet {name}`")
    try:
        sheet = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a sheet.json ({e})") from None
    if not isinstance(sheet, dict) or not isinstance(sheet.get("candidates"), list) or not sheet["candidates"]:
        raise InputError(f"{path}: no candidates listed; render the sheet again")
    return sheet


def chosen_candidates(sheet: dict, picks: list[int] | None, top: int | None = None) -> list[dict]:
    """The candidate entries a character LoRA trains on, in sheet order: `picks` (1-based); without
    picks, every candidate of an unscored sheet, or the `top` best by combined score of a scored one
    (default: the better half, rounded up; ties go to the lower number)."""
    candidates = sheet["candidates"]
    n = len(candidates)
    if picks is not None:
        wrong = [p for p in picks if not 1 <= p <= n]
        if wrong:
            raise ConfigError(f"--use-sheet {sheet['character']}: pick {wrong[0]} is out of range; "
                              f"the sheet has candidates 1..{n}")
        return [candidates[p - 1] for p in sorted(picks)]
    if not is_scored(sheet):
        return list(candidates)
    combined = [(c.get("scores") or {}).get("combined") for c in candidates]
    keep = min(n, top or math.ceil(n / 2))
    order = sorted(range(n), key=lambda j: (-(combined[j] if combined[j] is not None else -math.inf), j))
    return [candidates[j] for j in sorted(order[:keep])]


def is_scored(sheet: dict) -> bool:
    return any((c.get("scores") or {}).get("combined") is not None for c in sheet["candidates"])


def with_character_lora(story: Story, name: str, lora: str | Path) -> Story:
    """The story with character `name`'s LoRA replaced by `lora` (its weight and trigger stay)."""
    characters = [c.model_copy(update={"lora": str(lora)}) if c.name == name else c for c in story.characters]
    return story.model_copy(update={"characters": characters})
