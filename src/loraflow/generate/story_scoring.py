"""Scores for storyboards: `--score` writes each panel's scores into story.json: aesthetic, CLIP
(text alignment) and, per character present, identity; `--best-of N` renders N seeds per scene and
keeps the best; `--repair` re-renders only the panels under a threshold (a common contest trick:
the tutorial's contest accepted a story only at a mean aesthetic score of 6 or more).

The combined score puts the three on one 0..1 scale, as a weighted mean of what was computed:
identity (the least consistent character of the panel; CLIP-I cosine or the demo checker's match),
CLIP score / 100 and aesthetic / 10. A character kept to a region of its panel (`regions:`) is
scored, and anchors later panels, on that region's bounding box only.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from loraflow.errors import ConfigError
from loraflow.generate.regions import region_masks
from loraflow.generate.session import save_results
from loraflow.generate.story import with_previous
from loraflow.images import load_rgb
from loraflow.models.prompt_syntax import plain_prompt
from loraflow.score import Scorer
from loraflow.score.clip import load_clip
from loraflow.score.identity import ClipIdentity


def wants_scores(cfg) -> bool:
    return cfg.score or cfg.best_of > 1 or cfg.repair


def panel_scorer(cfg, casts, scorer=None, identity=None):
    """The `PanelScorer` a storyboard needs, or None when nothing asks for scores. A story with a cast is
    scored whenever an identity scorer is at hand (given, --identity, or auto with --clip)."""
    has_cast = any(c.members for c in casts)
    identity_asked = identity is not None or cfg.identity in ("clip", "demo") or (cfg.identity == "auto" and cfg.clip)
    if not (wants_scores(cfg) or (has_cast and identity_asked)):
        return None
    check_metric(cfg, has_cast and identity_asked)
    if scorer is None and (cfg.clip or cfg.aesthetic):
        scorer = Scorer.load(clip=cfg.clip, aesthetic=cfg.aesthetic, device=cfg.device)
    if identity is None and has_cast:
        identity = load_identity(cfg, scorer)
    if scorer is None and identity is None:
        raise ConfigError("--score, --best-of and --repair need local weights: --aesthetic PATH and/or --clip PATH "
                          "(or a cast and an identity scorer, --identity)")
    return PanelScorer(scorer, identity if has_cast else None, casts, cfg.score_weights())


def load_identity(cfg, scorer=None):
    """The identity scorer `cfg.identity` names ("auto": CLIP-I when --clip is given). The demo checker
    lives in a layer above this one: `loraflow storyboard` (or a Python caller) passes it in."""
    if cfg.identity == "none" or (cfg.identity == "auto" and not cfg.clip):
        return None
    if cfg.identity == "demo":
        raise ConfigError("--identity demo: pass identity=DemoIdentity() (loraflow.demo.identity) when calling "
                          "run_storyboard from Python; the loraflow command does this itself")
    if not cfg.clip:
        raise ConfigError("--identity clip needs a local CLIP folder: --clip PATH")

    if scorer is not None and scorer.clip is not None:
        return ClipIdentity(scorer.clip)

    return ClipIdentity(load_clip(cfg.clip, cfg.device))


@dataclass
class PanelScorer:
    """Scores panels scene by scene. A character without references is anchored to the first panel kept
    for it (`keep`), so panels must be kept in scene order."""

    scorer: object | None  # loraflow.score.Scorer: aesthetic / CLIP score
    identity: object | None  # loraflow.score.identity.IdentityScorer
    casts: list  # PanelCast per scene
    weights: dict[str, float]  # {"identity", "text", "aesthetic"} -> weight in the combined score
    anchors: dict[str, list] = field(default_factory=dict)  # character name -> anchor images
    anchored_by: dict[str, str] = field(default_factory=dict)  # name -> "references" | "scene-NN"

    def __post_init__(self):
        if self.identity is None or not self.identity.uses_anchors:
            return
        for cast in self.casts:
            for c in cast.members:
                if c.references and c.name not in self.anchors:
                    self.anchors[c.name] = [load_rgb(p) for p in c.references]
                    self.anchored_by[c.name] = "references"

    def score(self, k: int, images: list, prompt: str) -> list[dict]:
        """One dict per candidate image of scene k: aesthetic, clip, identity {name: value}, combined."""
        n = len(images)
        if self.scorer is not None:
            out = [s.to_dict() for s in self.scorer.score(images, [plain_prompt(prompt)] * n)]
        else:
            out = [{"aesthetic": None, "clip": None} for _ in images]
        if self.identity is not None and self.casts[k].members:
            for d in out:
                d["identity"] = {}
            for c in self.casts[k].members:
                views = [self.view(k, c.name, im) for im in images]
                for d, value in zip(out, self.identity.identity(views, c, self.anchors.get(c.name))):
                    d["identity"][c.name] = value
        for d in out:
            d["combined"] = combined(d, self.weights)
        return out

    def keep(self, k: int, image) -> None:
        if self.identity is None or not self.identity.uses_anchors:
            return
        for c in self.casts[k].members:
            if c.name not in self.anchors:
                self.anchors[c.name] = [self.view(k, c.name, image)]
                self.anchored_by[c.name] = f"scene-{k + 1:02d}"

    def view(self, k: int, name: str, image):
        """What of scene k's picture shows character `name`: its region's bounding box, else all of it."""
        region = next((r.region for r in self.casts[k].regions if r.character == name), None)
        return image if region is None else image.crop(region_box(region, *image.size))


def region_box(region: str, width: int, height: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels at least half inside `region` (the whole picture if none)."""
    import numpy as np

    inside = region_masks([region], height, width)[0] >= 0.5
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if not len(rows):
        return 0, 0, width, height
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def identity_value(scores: dict) -> float | None:
    """A panel's identity: its least consistent character (None when none was scored)."""
    values = [v for v in (scores.get("identity") or {}).values() if v is not None]
    return min(values) if values else None


def combined(scores: dict, weights: dict[str, float]) -> float | None:
    parts = [(weights["identity"], identity_value(scores)),
             (weights["text"], None if scores.get("clip") is None else scores["clip"] / 100.0),
             (weights["aesthetic"], None if scores.get("aesthetic") is None else scores["aesthetic"] / 10.0)]
    parts = [(w, v) for w, v in parts if v is not None and w > 0]
    total = sum(w for w, _ in parts)
    return sum(w * v for w, v in parts) / total if total else None


def metric_value(scores: dict, metric: str) -> float:
    value = identity_value(scores) if metric == "identity" else scores.get(metric)
    return float("-inf") if value is None else value


def check_metric(cfg, identity_asked: bool) -> None:
    """Before loading anything: --best-of-metric must name a score that will be computed."""
    needs = {"aesthetic": ("--aesthetic PATH", cfg.aesthetic), "clip": ("--clip PATH", cfg.clip),
             "identity": ("a cast and an identity scorer (--identity)", identity_asked), "combined": ("", True)}
    what, have = needs[cfg.best_of_metric]
    if cfg.best_of > 1 and not have:
        raise ConfigError(f"--best-of with --best-of-metric {cfg.best_of_metric} needs {what}")


def score_in_order(panels: PanelScorer, results, items) -> list[dict]:
    scores = []
    for k, (result, item) in enumerate(zip(results, items)):
        [s] = panels.score(k, [result.image], item.prompt)
        panels.keep(k, result.image)
        scores.append(s)
    return scores


def render_candidates(session, item, seeds: list[int], cfg, progress=None) -> list:
    return session.generate_many([item.model_copy(update={"seed": s}) for s in seeds],
                                 batch_size=cfg.batch_size, progress=progress)


def pick_best_of(session, items, out: Path, cfg, panels: PanelScorer, progress=None):
    """Per scene: seeds seed..seed+N-1, scored; the best by `--best-of-metric` is saved as the panel.
    Returns (results, their scores, every candidate's seed and scores per scene)."""
    results, best_scores, candidates = [], [], []
    for k, item in enumerate(items):
        if k:
            item = with_previous(item, results[-1].path)
        step = (lambda done, n, k=k: progress(k * n + done, len(items) * n)) if progress else None
        rendered = render_candidates(session, item, [item.seed + j for j in range(cfg.best_of)], cfg, step)
        scores = panels.score(k, [r.image for r in rendered], item.prompt)
        best = max(range(len(rendered)), key=lambda j: metric_value(scores[j], cfg.best_of_metric))  # first wins ties
        save_results([rendered[best]], out, stem=f"scene-{k + 1:02d}")
        panels.keep(k, rendered[best].image)
        results.append(rendered[best])
        best_scores.append(scores[best])
        candidates.append([{"seed": r.seed, **s} for r, s in zip(rendered, scores)])
    return results, best_scores, candidates


def repair(session, items, results: list, scores: list[dict], out: Path, cfg, panels: PanelScorer) -> dict:
    """Re-render the panels whose combined score is under `cfg.repair_threshold`, in scene order, with seeds
    not tried before (after the best-of ones), until each passes or `cfg.repair_budget` renders are spent.
    A panel keeps its best picture; the others are not touched (their files stay byte-identical). A panel
    that is a character's anchor (its first appearance, without references) is left alone: the other
    panels' identity was measured against it."""
    anchors = {int(a.split("-")[1]) - 1 for a in panels.anchored_by.values() if a.startswith("scene-")}
    used, report = 0, []
    for k, s in enumerate(scores):
        if s["combined"] is None or s["combined"] >= cfg.repair_threshold:
            continue
        entry = {"index": k + 1, "before": s["combined"], "seed_before": results[k].seed, "tries": []}
        if k in anchors:
            report.append({**entry, "after": s["combined"], "seed": results[k].seed, "passed": False,
                           "skipped": "anchor of " + ", ".join(n for n, a in panels.anchored_by.items()
                                                               if a == f"scene-{k + 1:02d}")})
            continue
        item = items[k] if k == 0 else with_previous(items[k], results[k - 1].path)
        seed = item.seed + cfg.best_of
        while used < cfg.repair_budget and scores[k]["combined"] < cfg.repair_threshold:
            [result] = render_candidates(session, item, [seed], cfg)
            [tried] = panels.score(k, [result.image], item.prompt)
            used += 1
            entry["tries"].append({"seed": seed, "combined": tried["combined"]})
            if tried["combined"] is not None and tried["combined"] > scores[k]["combined"]:
                results[k], scores[k] = result, tried
            seed += 1
        if results[k].seed != entry["seed_before"]:
            save_results([results[k]], out, stem=f"scene-{k + 1:02d}")
        entry.update(after=scores[k]["combined"], seed=results[k].seed,
                     passed=scores[k]["combined"] >= cfg.repair_threshold)
        report.append(entry)
    return {"threshold": cfg.repair_threshold, "budget": cfg.repair_budget, "renders": used, "panels": report}


def describe_repair(report: dict) -> str:
    """What --repair did, one line per panel it looked at: seeds tried, combined score before and after."""
    lines = [f"repair: {report['renders']} of {report['budget']} re-renders, threshold {report['threshold']:g}"]
    for p in report["panels"]:
        if "skipped" in p:
            lines.append(f"  scene {p['index']}: {p['before']:.3f}, left alone ({p['skipped']})")
            continue
        seeds = ", ".join(str(t["seed"]) for t in p["tries"]) or "none (budget spent)"
        verdict = "passes" if p["passed"] else "still under"
        lines.append(f"  scene {p['index']}: {p['before']:.3f} -> {p['after']:.3f} {verdict} "
                     f"(kept seed {p['seed']}; tried {seeds})")
    return "\n".join(lines)


def summarize(scores: list[dict]) -> dict:
    """Story-level mean and min of each score that was computed."""
    out = {}
    columns = {"aesthetic": [s.get("aesthetic") for s in scores if s],
               "clip": [s.get("clip") for s in scores if s],
               "identity": [identity_value(s) for s in scores if s],
               "combined": [s.get("combined") for s in scores if s]}
    for key, values in columns.items():
        values = [v for v in values if v is not None]
        if values:
            out[f"mean_{key}"] = statistics.fmean(values)
            out[f"min_{key}"] = min(values)
    return out
