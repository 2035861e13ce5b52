"""The score report as a picture: one row per image, an aesthetic bar (0-10, with the gate as a red
line) and a CLIP score bar (0-100), grouped by folder with the folder's means. Pillow only."""
from __future__ import annotations

from pathlib import Path
from typing import Any

ROW = 18  # px per image row
LABEL_W, AES_W, CLIP_W, VALUE_W, PAD = 220, 300, 200, 56, 10
AES_MAX, CLIP_MAX = 10.0, 100.0
COLORS = {"bg": "white", "text": (30, 30, 30), "muted": (140, 140, 140), "aesthetic": (70, 130, 180),
          "clip": (95, 170, 95), "gate": (210, 40, 40), "axis": (200, 200, 200), "header": (235, 235, 240)}


def score_chart(report: dict[str, Any]):
    """A PIL image of `report` (as returned by `loraflow.score.run.run_score`)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    groups = [(f, [r for r in report["images"] if r["folder"] == f["folder"]]) for f in report["folders"]]
    n_rows = 2 + sum(1 + len(rows) for _, rows in groups)
    aes_x = PAD + LABEL_W
    clip_x = aes_x + AES_W + VALUE_W + PAD
    width = clip_x + CLIP_W + VALUE_W + PAD
    image = Image.new("RGB", (width, n_rows * ROW + 2 * PAD), COLORS["bg"])
    draw = ImageDraw.Draw(image)

    y = PAD
    draw.text((PAD, y), "image", fill=COLORS["text"], font=font)
    draw.text((aes_x, y), f"aesthetic (0-{AES_MAX:g})", fill=COLORS["aesthetic"], font=font)
    draw.text((clip_x, y), f"CLIP score (0-{CLIP_MAX:g})", fill=COLORS["clip"], font=font)
    y += 2 * ROW
    top = y
    for folder, rows in groups:
        draw.rectangle((PAD, y, width - PAD, y + ROW - 2), fill=COLORS["header"])
        means = f"mean aesthetic {_num(folder['aesthetic_mean'])}, CLIP {_num(folder['clip_mean'])}"
        draw.text((PAD + 2, y + 2), _fit(f"{Path(folder['folder']).name or folder['folder']}  {means}", 60),
                  fill=COLORS["text"], font=font)
        y += ROW
        for row in rows:
            draw.text((PAD, y + 2), _fit(Path(row["file"]).name, 34), fill=COLORS["text"], font=font)
            if row["error"]:
                draw.text((aes_x, y + 2), "unreadable", fill=COLORS["muted"], font=font)
            _bar(draw, font, aes_x, y, AES_W, row["aesthetic"], AES_MAX, COLORS["aesthetic"])
            _bar(draw, font, clip_x, y, CLIP_W, row["clip"], CLIP_MAX, COLORS["clip"])
            y += ROW
    if report.get("gate") is not None:
        gx = aes_x + round(AES_W * min(max(report["gate"], 0.0), AES_MAX) / AES_MAX)
        draw.line((gx, top - 4, gx, y), fill=COLORS["gate"], width=2)
        draw.text((gx + 3, top - ROW + 2), f"gate {report['gate']:g}", fill=COLORS["gate"], font=font)
    return image


def _bar(draw, font, x: int, y: int, width: int, value: float | None, vmax: float, color) -> None:
    draw.line((x, y + ROW - 3, x + width, y + ROW - 3), fill=COLORS["axis"])
    if value is None:
        return
    length = round(width * min(max(value, 0.0), vmax) / vmax)
    draw.rectangle((x, y + 3, x + max(length, 1), y + ROW - 4), fill=color)
    draw.text((x + width + 4, y + 2), _num(value), fill=COLORS["text"], font=font)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fit(text: str, chars: int) -> str:
    return text if len(text) <= chars else text[: chars - 1] + "…"
