"""A storyboard's contact sheet: every panel with its scores, the weakest flagged, as a PNG
(`contact-sheet.png`) and a small HTML page (`contact-sheet.html`, next to the panel files).

Reads the scores story.json holds per scene: `combined`, `aesthetic`, `clip` and `identity` per
character. The weakest panels are those with the lowest combined score: every panel tied there is
flagged (a tie at 0 flags them all alike), and none when all panels score the same (nothing stands out).
"""
from __future__ import annotations

import html
from pathlib import Path

from loraflow.atomic import atomic_save_image, atomic_write_text
from loraflow.generate.grid import find_font

CELL = 192  # panel side on the sheet: demo panels (64 px) are scaled up, large ones down
LINE = 16  # text line height in pixels


def weakest(scenes: list[dict]) -> list[int]:
    """Indices (0-based) of the scenes tied at the lowest combined score; none when no scene has one
    or all scored scenes are equal."""
    scored = {k: s["scores"]["combined"] for k, s in enumerate(scenes)
              if s.get("scores", {}).get("combined") is not None}
    if not scored or min(scored.values()) == max(scored.values()):
        return []
    low = min(scored.values())
    return [k for k, v in scored.items() if v == low]


def score_lines(scene: dict) -> list[str]:
    sc = scene.get("scores", {})
    lines = [f"{name} {_num(v)}" for name, v in (sc.get("identity") or {}).items()]
    parts = [f"{label} {_num(sc[key])}" for key, label in (("clip", "text"), ("aesthetic", "aesth"))
             if sc.get(key) is not None]
    if parts:
        lines.append("  ".join(parts))
    lines.append(f"score {_num(sc.get('combined'))}")
    return lines


def _num(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def write_contact_sheet(out: Path, index: dict, images: list, columns: int = 4) -> dict[str, str]:
    """Draw the sheet and the page into `out`; returns their file names (for story.json)."""
    from PIL import Image, ImageDraw

    scenes = index["scenes"]
    low = weakest(scenes)
    text_rows = 2 + max(len(score_lines(s)) for s in scenes)  # title + lines + a flag line
    cell_h = CELL + text_rows * LINE + 8
    rows = -(-len(scenes) // columns)
    sheet = Image.new("RGB", (columns * (CELL + 8), rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font, _ = find_font(12)
    for k, (scene, image) in enumerate(zip(scenes, images)):
        x, y = (k % columns) * (CELL + 8) + 4, (k // columns) * cell_h + 4
        sheet.paste(image.convert("RGB").resize((CELL, CELL), Image.NEAREST), (x, y))
        if k in low:  # a red frame around each weakest panel
            draw.rectangle((x - 3, y - 3, x + CELL + 2, y + CELL + 2), outline=(220, 30, 30), width=3)
        lines = [f"{scene['index']}. {scene.get('title') or ''}".strip(), *score_lines(scene)]
        if k in low:
            lines.append("weakest")
        for j, line in enumerate(lines):
            draw.text((x, y + CELL + 4 + j * LINE), line, fill=(200, 0, 0) if line == "weakest" else "black",
                      font=font)
    atomic_save_image(sheet, out / "contact-sheet.png")
    atomic_write_text(out / "contact-sheet.html", contact_page(index, low))
    return {"png": "contact-sheet.png", "html": "contact-sheet.html",
            "weakest": [scenes[k]["index"] for k in low]}  # scene numbers, as on the sheet


def contact_page(index: dict, low: list[int]) -> str:
    cells = []
    for k, scene in enumerate(index["scenes"]):
        lines = "".join(f"<div>{html.escape(line)}</div>" for line in score_lines(scene))
        flag = '<div class="flag">weakest</div>' if k in low else ""
        cells.append(f'<figure class="{"weakest" if k in low else ""}"><img src="{html.escape(scene["file"])}" '
                     f'alt="scene {scene["index"]}" title="{html.escape(scene["prompt"])}">'
                     f'<figcaption><b>{scene["index"]}. {html.escape(scene.get("title") or "")}</b>{lines}{flag}'
                     f"</figcaption></figure>")
    title = html.escape(index.get("title") or "story")
    summary = "".join(f"<li>{html.escape(k)}: {v:.3f}</li>" for k, v in (index.get("scores") or {}).items())
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}: contact sheet</title>
<style>body{{font-family:sans-serif}} .grid{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0;width:{CELL}px;border:3px solid transparent}} figure.weakest{{border-color:#d22}}
img{{width:{CELL}px;height:{CELL}px;image-rendering:pixelated}} .flag{{color:#c00;font-weight:bold}}</style>
</head><body><h1>{title}</h1><ul>{summary}</ul><div class="grid">{"".join(cells)}</div></body></html>
"""
