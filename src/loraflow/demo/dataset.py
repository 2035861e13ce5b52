"""Write the demo training set in DiffSynth's layout (`train/metadata.csv` + images), which
`loraflow train` and `loraflow.data.training_manifest` read, plus the held-out scenes for evaluation."""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

from loraflow.demo.shapes import Scene, all_scenes, draw_scene, split_held_out


def write_dataset(out: str | Path, n: int = 2000, size: int = 64, seed: int = 0, lang: str = "both",
                  style: str = "plain", jitter: float = 0.06, include_held_out: bool = False,
                  style_in_caption: bool = False) -> Path:
    """`n` images of scenes from the training split (or all scenes with `include_held_out`); captions
    in English, Chinese or both (alternating). A style data set (`striped`) is captioned by content
    only unless `style_in_caption`, so a LoRA trained on it applies the style to every prompt (a
    style LoRA); with the word in the captions, the style follows the word. Returns the folder."""
    import dataclasses

    out = Path(out)
    train_dir = out / "train"
    train_dir.mkdir(parents=True, exist_ok=True)
    scenes = all_scenes(style)
    train, held_out = split_held_out(scenes, seed=0)  # the split never depends on the data seed
    pool = scenes if include_held_out else train
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        scene = rng.choice(pool)
        language = lang if lang != "both" else ("en", "zh")[i % 2]
        name = f"{i:06d}.png"
        draw_scene(scene, size, jitter=jitter, rng=rng).save(train_dir / name)
        captioned = scene if style_in_caption else dataclasses.replace(scene, style="plain")
        rows.append({"file_name": name, "text": captioned.caption(language)})
    with open(train_dir / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    recipe = {"n": n, "size": size, "seed": seed, "lang": lang, "style": style, "jitter": jitter,
              "style_in_caption": style_in_caption,
              "held_out": [scene.__dict__ for scene in held_out]}
    (out / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def held_out_scenes(style: str = "plain") -> list[Scene]:
    return split_held_out(all_scenes(style), seed=0)[1]
