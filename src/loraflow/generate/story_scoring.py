"""Scores for storyboards: `--score` writes each panel's aesthetic / CLIP score into story.json,
`--best-of N` renders N seeds per scene and keeps the best (a common contest trick: the
tutorial's contest accepted a story only at a mean aesthetic score of 6 or more)."""
from __future__ import annotations

import statistics
from pathlib import Path

from loraflow.errors import ConfigError
from loraflow.generate.session import save_results
from loraflow.generate.story import with_previous
from loraflow.models.prompt_syntax import plain_prompt
from loraflow.score import Scorer


def load_scorer(cfg):
    """A `loraflow.score.Scorer` when the storyboard asks for scores, else None."""
    if not (cfg.score or cfg.best_of > 1):
        return None
    if not (cfg.clip or cfg.aesthetic):
        raise ConfigError("--score and --best-of need local weights: --aesthetic PATH and/or --clip PATH")
    if cfg.best_of > 1 and not getattr(cfg, cfg.best_of_metric):
        raise ConfigError(f"--best-of with --best-of-metric {cfg.best_of_metric} needs --{cfg.best_of_metric} PATH")
    return Scorer.load(clip=cfg.clip, aesthetic=cfg.aesthetic, device=cfg.device)


def score_results(scorer, results, items) -> list[dict]:
    scores = scorer.score([r.image for r in results], [plain_prompt(i.prompt) for i in items])
    return [s.to_dict() for s in scores]


def pick_best_of(session, items, out: Path, cfg, scorer, progress=None) -> tuple[list, list[dict], list[list[dict]]]:
    """Per scene: seeds seed..seed+N-1, scored; the best is saved as the scene's panel.
    Returns (results, their scores, every candidate's seed and scores per scene)."""
    results, best_scores, candidates = [], [], []
    for k, item in enumerate(items):
        if k:
            item = with_previous(item, results[-1].path)
        tries = [item.model_copy(update={"seed": item.seed + j}) for j in range(cfg.best_of)]
        step = (lambda done, n, k=k: progress(k * n + done, len(items) * n)) if progress else None
        rendered = session.generate_many(tries, batch_size=cfg.batch_size, progress=step)
        scores = [s.to_dict() for s in scorer.score([r.image for r in rendered], [plain_prompt(item.prompt)] * len(rendered))]
        values = [s[cfg.best_of_metric] for s in scores]
        best = max(range(len(rendered)), key=lambda j: values[j])  # first of equals wins
        save_results([rendered[best]], out, stem=f"scene-{k + 1:02d}")
        results.append(rendered[best])
        best_scores.append(scores[best])
        candidates.append([{"seed": r.seed, **s} for r, s in zip(rendered, scores)])
    return results, best_scores, candidates


def summarize(scores: list[dict]) -> dict:
    """Story-level mean and min of each score that was computed."""
    out = {}
    for key in ("aesthetic", "clip"):
        values = [s[key] for s in scores if s and s.get(key) is not None]
        if values:
            out[f"mean_{key}"] = statistics.fmean(values)
            out[f"min_{key}"] = min(values)
    return out
