"""Procedural scenes for the demo model: one shape of a named colour, at a named position, on a
named background, with English and Chinese captions. Deterministic for a seed.

    scene = Scene("red", "circle", "left", "white")
    image = draw_scene(scene, size=64)          # PIL image
    scene.caption("en") -> "a red circle on the left, white background"
    scene.caption("zh") -> "白色背景,左边有一个红色的圆形"

`style="striped"` fills the shape with stripes: the new style a demo LoRA learns.
"""
from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "orange": (245, 140, 30), "yellow": (240, 220, 40), "green": (40, 170, 70),
    "blue": (40, 80, 220), "purple": (140, 60, 190), "pink": (240, 120, 180),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "star")
POSITIONS: dict[str, tuple[float, float]] = {  # centre of the shape as a fraction of the image
    "center": (0.5, 0.5), "left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28), "bottom": (0.5, 0.72),
}
ZH = {
    "red": "红色", "orange": "橙色", "yellow": "黄色", "green": "绿色", "blue": "蓝色", "purple": "紫色", "pink": "粉色",
    "white": "白色", "gray": "灰色", "black": "黑色",
    "circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形",
    "center": "中间", "left": "左边", "right": "右边", "top": "上边", "bottom": "下边",
}
ZH_GLUE = ("背景", "有一个", "的", "条纹")  # the words of Scene.caption("zh") besides the named ones
STYLES = ("plain", "striped")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    position: str = "center"
    background: str = "white"
    style: str = "plain"

    def caption(self, lang: str = "en") -> str:
        if lang == "zh":
            striped = "条纹" if self.style == "striped" else ""
            return f"{ZH[self.background]}背景,{ZH[self.position]}有一个{ZH[self.colour]}的{striped}{ZH[self.shape]}"
        where = "in the center" if self.position == "center" else f"at the {self.position}" \
            if self.position in ("top", "bottom") else f"on the {self.position}"
        striped = "striped " if self.style == "striped" else ""
        return f"a {self.colour} {striped}{self.shape} {where}, {self.background} background"


def all_scenes(style: str = "plain") -> list[Scene]:
    return [Scene(c, s, p, b, style) for c, s, p, b in itertools.product(COLOURS, SHAPES, POSITIONS, BACKGROUNDS)]


def caption_vocabulary() -> list[str]:
    """Every word of every caption, English then Chinese: all the words the demo model learnt (its
    `loraflow.json` declares them, so prompts with other words get a notice)."""
    import re

    english = {word for style in STYLES for scene in all_scenes(style) for word in re.findall(r"[a-z]+", scene.caption("en"))}
    return sorted(english) + sorted(set(ZH.values()) | set(ZH_GLUE))


def split_held_out(scenes: list[Scene], fraction: float = 0.15, seed: int = 0) -> tuple[list[Scene], list[Scene]]:
    """Hold out whole (colour, shape) combinations, so the evaluation asks for pairs never seen."""
    pairs = sorted({(s.colour, s.shape) for s in scenes})
    rng = random.Random(seed)
    held = set(rng.sample(pairs, max(1, round(len(pairs) * fraction))))
    return [s for s in scenes if (s.colour, s.shape) not in held], [s for s in scenes if (s.colour, s.shape) in held]


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon of a square, triangle or 5-point star centred at (cx, cy) with radius r."""
    if shape == "square":
        return [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    points = []
    for k in range(10):  # star: alternate outer and inner radius, first point up
        angle = -math.pi / 2 + k * math.pi / 5
        radius = r if k % 2 == 0 else r * 0.42
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def draw_scene(scene: Scene, size: int = 64, jitter: float = 0.0, rng: random.Random | None = None):
    """The scene as a `size`x`size` RGB image; `jitter` moves/scales the shape a little (data variety)."""
    from PIL import Image, ImageDraw

    rng = rng or random.Random(0)
    fx, fy = POSITIONS[scene.position]
    cx = (fx + rng.uniform(-jitter, jitter)) * size
    cy = (fy + rng.uniform(-jitter, jitter)) * size
    r = size * 0.2 * (1 + rng.uniform(-jitter, jitter))
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if scene.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(shape_points(scene.shape, cx, cy, r), fill=255)
    fill = Image.new("RGB", (size, size), COLOURS[scene.colour])
    if scene.style == "striped":  # diagonal stripes of colour and background inside the shape
        stripes = Image.new("L", (size, size), 0)
        period = max(4, size // 8)  # 4 px bands at 64 px: what a 4x-downsampling VAE can carry
        stripes.putdata([255 if ((x + y) // (period // 2)) % 2 == 0 else 0
                         for y in range(size) for x in range(size)])
        from PIL import ImageChops

        mask = ImageChops.multiply(mask, stripes)
    image.paste(fill, (0, 0), mask)
    return image
