"""Write the demo training set in DiffSynth's layout (`train/metadata.csv` + images), which
`loraflow train` and `loraflow.data.training_manifest` read, plus the held-out scenes for evaluation;
and the small set that overfits on purpose (`write_overfit_dataset`)."""
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
    _write_metadata(train_dir, rows)
    recipe = {"n": n, "size": size, "seed": seed, "lang": lang, "style": style, "jitter": jitter,
              "style_in_caption": style_in_caption,
              "held_out": [scene.__dict__ for scene in held_out]}
    (out / "recipe.json").write_text(json.dumps(recipe, ensure_ascii=False, indent=1), encoding="utf-8")
    return out


def held_out_scenes(style: str = "plain") -> list[Scene]:
    return split_held_out(all_scenes(style), seed=0)[1]


def _write_metadata(folder: Path, rows: list[dict]) -> None:
    with open(folder / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)


# The overfit set's one training scene. Every held-out scene differs from it in colour, shape, position
# and background, so whatever a LoRA memorises beyond the stripes is wrong for every held-out picture.
OVERFIT_SCENE = Scene("red", "circle", "left", "white", "striped")
OVERFIT_CAPTION = "striped"  # a trigger word only: the captions tell no picture from another


def write_overfit_dataset(out: str | Path, n_train: int = 4, n_held_out: int = 16, size: int = 64,
                          seed: int = 0) -> Path:
    """A style data set too small for its LoRA, for the demo overfit run (examples/train/demo-overfit.yaml):
    OUT/train holds `n_train` jittered pictures of OVERFIT_SCENE, OUT/held_out `n_held_out` striped
    pictures of scenes sharing nothing with it but the stripes; every caption is the trigger word.
    A LoRA learns the stripes first, which the held-out pictures share (held-out loss falls), then fits
    the one scene it sees, which none of them shows (it rises again). Returns `out`."""
    out = Path(out)
    rng = random.Random(seed)
    others = [s for s in all_scenes("striped") if s.colour != OVERFIT_SCENE.colour and s.shape != OVERFIT_SCENE.shape
              and s.position != OVERFIT_SCENE.position and s.background != OVERFIT_SCENE.background]
    for split, scenes in (("train", [OVERFIT_SCENE] * n_train), ("held_out", rng.sample(others, n_held_out))):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i, scene in enumerate(scenes):
            name = f"{i:03d}.png"
            draw_scene(scene, size, jitter=0.06, rng=rng).save(folder / name)
            rows.append({"file_name": name, "text": OVERFIT_CAPTION})
        _write_metadata(folder, rows)
    return out
