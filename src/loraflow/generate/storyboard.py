"""Storyboards: a story file (`story.py`) -> one image per scene, a grid image and a `story.json`
index. The tutorial's main job, as a command; `--score` / `--best-of` use `story_scoring.py`.
"""
from __future__ import annotations

import json
from pathlib import Path

from loraflow.atomic import atomic_save_image, atomic_write_text
from loraflow.generate.grid import make_grid
from loraflow.generate.session import GenerationSession, ProgressFn, save_results
from loraflow.generate.story import Story, StoryboardConfig, load_story, scene_configs, with_previous
from loraflow.generate.story_scoring import load_scorer, pick_best_of, score_results, summarize

# Story, StoryboardConfig and load_story live in story.py; importable from here as before.
__all__ = ["Story", "StoryboardConfig", "load_story", "render_in_order", "run_storyboard"]


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


def run_storyboard(cfg: StoryboardConfig, session: GenerationSession | None = None,
                   progress: ProgressFn | None = None, scorer=None, story: Story | None = None) -> dict:
    """Render every scene, the grid and story.json into `cfg.out`; returns the story.json dict.
    `story` is the story itself when it comes from Python rather than from the file `cfg.story`."""
    story = story if story is not None else load_story(cfg.story)
    items = scene_configs(story, cfg)
    scorer = scorer or load_scorer(cfg)
    if session is None:
        session = GenerationSession.from_options(cfg.model_copy(update={"model": cfg.model or story.model}))
    out = Path(cfg.out)
    candidates: list[list[dict]] = [[] for _ in items]
    scores: list[dict | None] = [None] * len(items)
    if cfg.best_of > 1:
        results, scores, candidates = pick_best_of(session, items, out, cfg, scorer, progress)
    elif any(scene.uses_previous() for scene in story.scenes):
        results = render_in_order(session, items, out, progress)
    else:
        results = session.generate_many(items, batch_size=cfg.batch_size, progress=progress)
        for k, result in enumerate(results, start=1):
            save_results([result], out, stem=f"scene-{k:02d}")

    if scorer is not None and cfg.best_of == 1:
        scores = score_results(scorer, results, items)

    grid_opts = story.grid
    captions = cfg.captions if cfg.captions is not None else grid_opts.captions
    width = cfg.grid_width or grid_opts.width
    height = cfg.grid_height or grid_opts.height
    size = (width, height) if width and height else None
    grid = make_grid([r.image for r in results], grid_opts.columns, size,
                     [s.title or f"{k}" for k, s in enumerate(story.scenes, 1)] if captions else None, grid_opts.font)
    grid_path = out / "grid.png"
    atomic_save_image(grid, grid_path)
    index = {
        "title": story.title,
        "model": session.loaded.name,
        "family": session.family.name,
        "grid": grid_path.name,
        "grid_size": list(grid.size),
        "scenes": [
            {"index": k, "title": s.title, "description": s.description, "prompt": items[k - 1].prompt,
             "negative_prompt": items[k - 1].negative_prompt, "seed": r.seed, "file": r.path.name, "infotext": r.infotext,
             **({"scores": sc} if sc is not None else {}),
             **({"candidates": candidates[k - 1]} if candidates[k - 1] else {})}
            for k, (s, r, sc) in enumerate(zip(story.scenes, results, scores), start=1)
        ],
    }
    if scorer is not None:
        index["scores"] = summarize(scores)
    atomic_write_text(out / "story.json", json.dumps(index, ensure_ascii=False, indent=2))
    return index

