"""Helpers shared by the training tests: a generated dataset of coloured shapes and a fast base config
(a module of its own: `conftest` is not importable by name)."""
from __future__ import annotations

import csv
import random
from pathlib import Path


COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")


def make_shapes_dataset(root: Path, n: int = 24, size=(64, 64), sizes=None, seed: int = 0) -> Path:
    """DiffSynth layout: root/train/metadata.csv (file_name,text) + PNGs of coloured shapes."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    train = root / "train"
    train.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        w, h = sizes[i % len(sizes)] if sizes else size
        colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
        image = Image.new("RGB", (w, h), (245, 245, 240))
        draw = ImageDraw.Draw(image)
        x0, y0 = rng.randint(0, w // 4), rng.randint(0, h // 4)
        box = (x0, y0, x0 + w // 2, y0 + h // 2)
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=COLOURS[colour])
        name = f"{i:03d}.png"
        image.save(train / name)
        rows.append({"file_name": name, "text": f"a {colour} {shape}"})
    with open(train / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def base_config(tmp_path: Path, dataset: Path, **overrides) -> dict:
    config = dict(model="tiny:sdxl", dataset=str(dataset), output=str(tmp_path / "out"), resolution=64,
                  lora_rank=4, lora_alpha=4.0, batch_size=4, learning_rate=1e-3, max_steps=4, seed=0,
                  cache_dir=str(tmp_path / "cache"), device="cpu")
    config.update(overrides)
    return config
