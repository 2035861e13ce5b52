"""Prompt adherence: draw held-out scenes (colour/shape pairs never trained on) with a model and
score each picture with the deterministic checker."""
from __future__ import annotations

import random
import statistics

from loraflow.demo.checker import read_image
from loraflow.demo.dataset import held_out_scenes


def evaluate(session, n: int = 40, seed: int = 0, lang: str = "en", style: str = "plain", steps: int = 20,
             size: int = 64, guidance_scale: float = 5.0, lora: list[str] | None = None) -> dict:
    """Accuracy per attribute over `n` held-out prompts, and the mean stripe score (style metric)."""
    from loraflow.generate.options import GenerateConfig

    scenes = held_out_scenes(style)
    rng = random.Random(seed)
    picked = [rng.choice(scenes) for _ in range(n)]
    items = [GenerateConfig(model="x", prompt=s.caption(lang), steps=steps, height=size, width=size,
                            guidance_scale=guidance_scale, seed=seed + i, lora=lora or [])
             for i, s in enumerate(picked)]
    results = session.generate_many(items, batch_size=8)
    readings = [read_image(r.image) for r in results]
    scores = {key: statistics.fmean(float(rd.matches(s)[key]) for rd, s in zip(readings, picked))
              for key in ("colour", "shape", "position", "background")}
    scores["stripes"] = statistics.fmean(rd.stripes for rd in readings)
    scores["n"] = n
    return scores
