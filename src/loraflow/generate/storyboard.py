"""Storyboards: a story file (`story.py`) -> one image per scene, a grid image and a `story.json`
index. The tutorial's main job, as a command; `--score` / `--best-of` / `--repair` use `story_scoring.py`.
"""
from __future__ import annotations

import json
from pathlib import Path

from loraflow.atomic import atomic_save_image, atomic_write_text, check_outputs_apart
from loraflow.generate import story_scoring as scoring
from loraflow.generate.contact_sheet import write_contact_sheet
from loraflow.generate.control.units import PREVIOUS
from loraflow.generate.grid import find_font, make_grid
from loraflow.generate.options import GenerateConfig
from loraflow.generate.session import GenerationSession, ProgressFn, save_results
from loraflow.generate.story import Scene, Story, StoryboardConfig, load_story, scene_configs, with_previous

# Story, StoryboardConfig and load_story live in story.py; importable from here as before.
__all__ = ["Story", "StoryboardConfig", "load_story", "render_all", "render_in_order", "run_storyboard"]


def render_in_order(session: GenerationSession, items: list[GenerateConfig], out: Path,
                    progress: ProgressFn | None = None) -> list:
    """Scene by scene, each saved before the next, so `@previous` can read it."""
    results = []
    total = len(items)
    for k, item in enumerate(items):
        if k:
            item = with_previous(item, results[-1].path)
        step = (lambda done, n, k=k: progress(k * n + done, total * n)) if progress else None
        [result] = session.generate_many([item], progress=step)
        save_results([result], out, stem=f"scene-{k + 1:02d}")
        results.append(result)
    return results


def _check_before_rendering(cfg: StoryboardConfig, story: Story, items: list[GenerateConfig]) -> None:
    """What would fail after every panel is drawn fails now: a caption font that is no font, and any
    panel, grid or index written over a file the story reads (a re-run into the folder whose
    scene-01.png is the next story's init image would destroy it)."""
    if story.grid.font and (cfg.captions if cfg.captions is not None else story.grid.captions):
        find_font(12, story.grid.font)
    out = Path(cfg.out)
    outputs = [out / f"scene-{k:02d}.png" for k in range(1, len(items) + 1)] + [out / "grid.png", out / "story.json"]
    inputs: dict[str, str | None] = {"story": cfg.story, "grid.font": story.grid.font}
    for k, item in enumerate(items):
        inputs[f"scenes.{k}.init_image"] = None if item.init_image == PREVIOUS else item.init_image
        inputs[f"scenes.{k}.mask"] = item.mask
        inputs.update({f"scenes.{k}.control.{j}.image": u.image for j, u in enumerate(item.control) if u.image != PREVIOUS})
    check_outputs_apart(outputs, inputs, "storyboard")


def render_all(session: GenerationSession, story: Story, items: list[GenerateConfig], out: Path,
               cfg: StoryboardConfig, progress: ProgressFn | None = None) -> list:
    """One render per scene: batched, or in order when a scene reads the previous panel."""
    if any(scene.uses_previous() for scene in story.scenes):
        return render_in_order(session, items, out, progress)
    results = session.generate_many(items, batch_size=cfg.batch_size, progress=progress)
    for k, result in enumerate(results, start=1):
        save_results([result], out, stem=f"scene-{k:02d}")
    return results


def run_storyboard(cfg: StoryboardConfig, session: GenerationSession | None = None,
                   progress: ProgressFn | None = None, scorer=None, identity=None,
                   story: Story | None = None, notes: dict | None = None) -> dict:
    """Render every scene, the grid and story.json into `cfg.out`; returns the story.json dict.
    `scorer` / `identity` replace the ones the options would load (`identity`: an IdentityScorer);
    `story` is the story itself when it comes from Python rather than from the file `cfg.story`;
    `notes` are top-level entries added to story.json (where a character's LoRA came from)."""
    story = story if story is not None else load_story(cfg.story)
    casts = story.panel_casts()
    items = scene_configs(story, cfg)
    _check_before_rendering(cfg, story, items)
    panels = scoring.panel_scorer(cfg, casts, scorer, identity)
    if session is None:  # on CUDA, a run whose plan exceeds the free memory stops here with one line
        from loraflow.generate.plan import largest_scene, stop_if_over_free_memory  # the planner imports torch
        from loraflow.models.loading import resolve_device

        stop_if_over_free_memory(largest_scene(items, cfg), resolve_device(cfg.device))
        session = GenerationSession.from_options(cfg.model_copy(update={"model": cfg.model or story.model}))
    out = Path(cfg.out)
    candidates: list[list[dict]] = [[] for _ in items]
    scores: list[dict | None] = [None] * len(items)
    if cfg.best_of > 1:
        results, scores, candidates = scoring.pick_best_of(session, items, out, cfg, panels, progress)
    else:
        results = render_all(session, story, items, out, cfg, progress)
        if panels is not None:
            scores = scoring.score_in_order(panels, results, items)
    repaired = scoring.repair(session, items, results, scores, out, cfg, panels) if cfg.repair else None

    index = story_index(story, session, items, casts, results, scores, candidates, write_grid(story, cfg, results, out))
    if panels is not None:
        index["scores"] = scoring.summarize(scores)
        if panels.identity is not None:
            index["identity"] = {"scorer": panels.identity.name, "anchors": dict(panels.anchored_by)}
        index["contact_sheet"] = write_contact_sheet(out, index, [r.image for r in results])
    if repaired is not None:
        index["repair"] = repaired
    index.update(notes or {})
    atomic_write_text(out / "story.json", json.dumps(index, ensure_ascii=False, indent=2))
    return index


def write_grid(story: Story, cfg: StoryboardConfig, results: list, out: Path):
    grid_opts = story.grid
    captions = cfg.captions if cfg.captions is not None else grid_opts.captions
    width = cfg.grid_width or grid_opts.width
    height = cfg.grid_height or grid_opts.height
    size = (width, height) if width and height else None
    grid = make_grid([r.image for r in results], grid_opts.columns, size,
                     [s.title or f"{k}" for k, s in enumerate(story.scenes, 1)] if captions else None, grid_opts.font)
    atomic_save_image(grid, out / "grid.png")
    return grid


def story_index(story: Story, session: GenerationSession, items, casts, results, scores, candidates, grid) -> dict:
    """story.json: per scene the resolved prompt, LoRAs and cast (words, LoRA, references), seed, file, scores."""
    def scene(k: int, s: Scene) -> dict:
        item, cast, r, sc = items[k], casts[k], results[k], scores[k]
        return {"index": k + 1, "title": s.title, "description": s.description, "prompt": item.prompt,
                "negative_prompt": item.negative_prompt, "loras": list(item.lora), "seed": r.seed, "file": r.path.name,
                "infotext": r.infotext,
                **({"cast": cast.to_json(), "references": [p for c in cast.members for p in c.references]}
                   if cast.members else {}),
                # what steered the panel through the IP-Adapter (the cast's references with a reference_strength)
                **({"ip_adapter": item.ip_adapter, "ip_references": [r.model_dump() for r in item.reference]}
                   if item.reference else {}),
                **({"scores": sc} if sc is not None else {}),
                **({"candidates": candidates[k]} if candidates[k] else {})}

    return {"title": story.title, "model": session.loaded.name, "family": session.family.name, "grid": "grid.png",
            "grid_size": list(grid.size), "scenes": [scene(k, s) for k, s in enumerate(story.scenes)]}
