"""Danbooru-style tags from a WD14-style ONNX tagger (SmilingWolf's wd-*-tagger models), via onnxruntime.

A tagger folder holds `model.onnx` (input (N, H, W, 3) float32 BGR 0..255; output (N, T)
sigmoid probabilities) and `selected_tags.csv` (columns tag_id, name, category, count; category
0 = general, 4 = character, 9 = rating). Preprocessing and tag names follow the reference
tagger (SmilingWolf/wd-tagger `app.py`): padded to a square on white,
resized bicubic to the model's size, RGB -> BGR; underscores become spaces except in kaomoji.
"""
from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from loraflow.errors import ConfigError

log = logging.getLogger(__name__)

CATEGORIES = {"general": 0, "character": 4, "rating": 9}
# Tags whose underscores are part of the face (wd-tagger keeps them as they are).
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3",
                     "6_9", ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})
WEIGHTS_HINT = ("a WD14-style tagger folder with model.onnx and selected_tags.csv, downloaded beforehand, e.g. "
                "`huggingface-cli download SmilingWolf/wd-swinv2-tagger-v3 model.onnx selected_tags.csv --local-dir DIR`")


def check_weights(path: str, key: str) -> Path:
    """The tagger folder, or a one-line error naming the missing file and where taggers come from."""
    folder = Path(path).expanduser()
    for name in ("model.onnx", "selected_tags.csv"):
        if not (folder / name).is_file():
            raise ConfigError(f"{key} '{path}' has no {name}: loraflow reads {WEIGHTS_HINT} "
                              "(loraflow never downloads during a run)")
    return folder


@dataclass(frozen=True)
class TagSpec:
    name: str  # as written into captions (underscores -> spaces unless kaomoji)
    category: int


def read_tags(path: Path, underscores_to_spaces: bool = True) -> list[TagSpec]:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ConfigError(f"{path}: expected a CSV with 'name' and 'category' columns (WD14 selected_tags.csv)")
    tags = []
    for row in rows:
        name = row["name"]
        if underscores_to_spaces and name not in KAOMOJI:
            name = name.replace("_", " ")
        tags.append(TagSpec(name, int(row["category"])))
    return tags


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
    """(size, size, 3) float32 BGR in 0..255: centred on a white square, bicubic-resized. The image
    comes from loraflow's one decoder (`load_rgb`), which has already put any alpha on white."""
    image = image.convert("RGB")
    side = max(image.size)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    if side != size:
        square = square.resize((size, size), Image.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]  # RGB -> BGR (the models were trained on OpenCV reads)


class Tagger:
    """A loaded ONNX tagger: `scores(images)` -> (N, T) probabilities, `select(row, ...)` -> tags."""

    def __init__(self, session, tags: list[TagSpec]):
        self.session, self.tags = session, tags
        shape = session.get_inputs()[0].shape  # (N, H, W, 3); N is a name when the batch is dynamic
        self.size = int(shape[1])
        self.max_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None

    @classmethod
    def load(cls, path: str, underscores_to_spaces: bool = True, device: str = "auto") -> "Tagger":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError("image_tagging_mapper needs onnxruntime: pip install 'loraflow[tagger]'") from None
        folder = check_weights(path, "tagger_model")
        tags = read_tags(folder / "selected_tags.csv", underscores_to_spaces)
        available = ort.get_available_providers()
        want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
        try:
            session = ort.InferenceSession(str(folder / "model.onnx"), providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types, with multi-line text
            reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            raise ConfigError(f"tagger_model '{path}': onnxruntime cannot load model.onnx: {reason}") from None
        n_out = session.get_outputs()[0].shape[-1]
        if isinstance(n_out, int) and n_out != len(tags):
            raise ConfigError(f"tagger_model '{path}': model.onnx gives {n_out} scores but selected_tags.csv "
                              f"lists {len(tags)} tags")
        log.info("tagger %s (%d tags) on %s", folder, len(tags), session.get_providers()[0])
        return cls(session, tags)

    def scores(self, images: list[Image.Image], batch_size: int = 8) -> np.ndarray:
        """(N, T) probabilities, `batch_size` images per run (1 for a model with a fixed batch)."""
        step = min(batch_size, self.max_batch or batch_size)
        name = self.session.get_inputs()[0].name
        parts = []
        for start in range(0, len(images), step):
            x = np.stack([to_model_input(im, self.size) for im in images[start:start + step]])  # (B, H, W, 3)
            parts.append(self.session.run(None, {name: x})[0])
        return np.concatenate(parts) if parts else np.zeros((0, len(self.tags)), np.float32)

    def select(self, row: np.ndarray, thresholds: dict[int, float]) -> list[tuple[str, float]]:
        """(tag, score) of every tag in a wanted category whose score is above its category's
        threshold (strictly, as wd-tagger), highest score first."""
        picked = [(t.name, float(s)) for t, s in zip(self.tags, row)
                  if t.category in thresholds and s > thresholds[t.category]]
        return sorted(picked, key=lambda p: -p[1])
