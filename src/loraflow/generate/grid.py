"""Storyboard grids: panels in rows of `columns`, optional captions, resized to a final size.

Layout follows the tutorial: 8 panels as 2 columns x 4 rows, then resized to 1024x2048.
Captions need a font with CJK glyphs for Chinese stories; we look for common system fonts
(`fonts-wqy-microhei`, `fonts-noto-cjk`, ...) and fall back to Pillow's built-in font.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from loraflow.errors import ConfigError

log = logging.getLogger(__name__)

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)


def find_font(size: int, font_path: str | None = None):
    """A TrueType font that can draw CJK text, or Pillow's default font (Latin only)."""
    from PIL import ImageFont

    if font_path:  # a font the user named must be one; silently falling back would hide the mistake
        if not Path(font_path).is_file():
            raise ConfigError(f"grid font '{font_path}' not found")
        try:
            return ImageFont.truetype(font_path, size), True
        except OSError:
            raise ConfigError(f"grid font '{font_path}' is not a TrueType/OpenType font (.ttf/.otf/.ttc)") from None
    for candidate in CJK_FONT_CANDIDATES:
        if Path(candidate).is_file():
            return ImageFont.truetype(candidate, size), True
    return ImageFont.load_default(size=size), False


def make_grid(images, columns: int = 2, size: tuple[int, int] | None = None,
              captions: list[str] | None = None, font_path: str | None = None, background="white"):
    """Panels left-to-right, top-to-bottom; `size` = final (width, height) of the whole grid."""
    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("make_grid needs at least one image")
    cell_w, cell_h = images[0].size
    rows = math.ceil(len(images) / columns)
    caption_h = 0
    font = None
    if captions:
        font, has_cjk = find_font(max(12, cell_h // 16), font_path)
        if not has_cjk and any(ord(c) > 0x2E80 for text in captions for c in text):
            log.warning("no CJK font found (install fonts-wqy-microhei); Chinese captions may show as boxes")
        caption_h = int(cell_h // 16 * 1.8) + 8
    grid = Image.new("RGB", (columns * cell_w, rows * (cell_h + caption_h)), background)
    draw = ImageDraw.Draw(grid)
    for k, image in enumerate(images):
        x, y = (k % columns) * cell_w, (k // columns) * (cell_h + caption_h)
        grid.paste(image.convert("RGB").resize((cell_w, cell_h)), (x, y))
        if captions and k < len(captions):
            draw.text((x + cell_w // 2, y + cell_h + caption_h // 2), _fit(draw, captions[k], font, cell_w - 8),
                      fill="black", font=font, anchor="mm")
    if size and tuple(size) != grid.size:
        grid = grid.resize(tuple(size), Image.LANCZOS)
    return grid


def _fit(draw, text: str, font, max_width: int) -> str:
    """Shorten a caption with an ellipsis until it fits one line."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"
