"""Storyboard grids: panels in rows of `columns`, optional captions, resized to a final size.

Layout follows the tutorial: 8 panels as 2 columns x 4 rows, then resized to 1024x2048.
Captions need a font with CJK glyphs for Chinese stories: the one the user names, else Noto Sans
CJK from the `noto-cjk-sans-otc` package (a dependency of the default install, SIL OFL 1.1, so a
fresh machine draws Chinese without a system font package), else common system fonts, else
Pillow's built-in font (Latin only: Chinese would show as boxes).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path

from loraflow.errors import ConfigError

log = logging.getLogger(__name__)

SYSTEM_CJK_FONTS = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",
    "/System/Library/Fonts/PingFang.ttc",
    "C:/Windows/Fonts/msyh.ttc",
)


def packaged_cjk_font() -> Path | None:
    """Noto Sans CJK as the `noto-cjk-sans-otc` package ships it (found through its own API)."""
    try:
        import noto_cjk_sans_otc
    except ImportError:  # an install without the default dependencies
        return None
    path = Path(str(noto_cjk_sans_otc.FONT_PATH))
    return path if path.is_file() else None


def find_font(size: int, font_path: str | None = None):
    """(font, has_cjk): a TrueType font that can draw CJK text, or Pillow's default font (Latin only)."""
    from PIL import ImageFont

    if font_path and not Path(font_path).is_file():
        # the panels are drawn by now: a grid in another font beats no grid
        log.warning("grid.font: no font file at %s; captions use the default font", font_path)
    for candidate in (font_path, packaged_cjk_font(), *SYSTEM_CJK_FONTS):
        if candidate and Path(candidate).is_file():
            return _chinese_face(str(candidate), size), True
    return ImageFont.load_default(size=size), False


def _chinese_face(path: str, size: int):
    """A font collection (.ttc) holds one face per language; Noto Sans CJK's first is Japanese, whose
    glyph shapes differ from Chinese ones. Take the Simplified Chinese face ("... SC") when there is one."""
    from PIL import ImageFont

    index = 0
    while True:
        try:
            face = ImageFont.truetype(path, size, index=index)
        except OSError:  # past the last face (or not a font file: the first call reports that)
            if index == 0:
                raise ConfigError(f"grid.font: {path} is not a TrueType/OpenType font") from None
            return ImageFont.truetype(path, size)
        if face.getname()[0].endswith(" SC"):
            return face
        index += 1


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
            log.warning("no CJK font found (the default install ships one: pip install noto-cjk-sans-otc); "
                        "Chinese captions may show as boxes")
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
