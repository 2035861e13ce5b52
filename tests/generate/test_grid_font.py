"""Chinese grid captions draw real glyphs with the font the default install ships, on a machine
with no CJK system font (system fonts are hidden here, whatever this machine has)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loraflow.generate import grid

CAPTION = "白色背景,左边有一个红色的圆形"
OTHER = "黑色背景,右边有一个蓝色的星形"  # same length, other characters
NO_GLYPH = "\ue000"  # a private-use code point: no font maps it, so it draws the font's .notdef box


@pytest.fixture
def no_system_fonts(monkeypatch):
    monkeypatch.setattr(grid, "SYSTEM_CJK_FONTS", ())


def glyph(font, ch: str) -> np.ndarray:
    mask = font.getmask(ch)
    return np.asarray(mask).reshape(mask.size[1], mask.size[0])  # (H, W) coverage


def caption_mask(caption: str) -> np.ndarray:
    """The caption strip under one white 256 px panel, as a boolean ink mask."""
    image = grid.make_grid([Image.new("RGB", (256, 256), "white")], columns=1, captions=[caption])
    return np.asarray(image.convert("L"))[256:] < 128


def test_each_character_has_its_own_glyph(no_system_fonts):
    font, has_cjk = grid.find_font(24)
    assert has_cjk and font.getname()[0] == "Noto Sans CJK SC"
    notdef = glyph(font, NO_GLYPH)
    masks = {ch: glyph(font, ch) for ch in dict.fromkeys(CAPTION) if ch != ","}
    tofu = [ch for ch, m in masks.items() if m.shape == notdef.shape and np.array_equal(m, notdef)]
    assert tofu == []
    assert len({(m.shape, m.tobytes()) for m in masks.values()}) == len(masks)  # all different


def test_grid_caption_is_drawn_not_boxes(no_system_fonts):
    caption, other, boxes = caption_mask(CAPTION), caption_mask(OTHER), caption_mask(NO_GLYPH * len(CAPTION))
    assert caption.sum() > 100
    assert not np.array_equal(caption, other) and not np.array_equal(caption, boxes)


def test_the_comparison_sees_boxes_when_no_cjk_font_is_found(no_system_fonts, monkeypatch, caplog):
    """Without the packaged font the same check fails: two different captions draw identical boxes."""
    monkeypatch.setattr(grid, "packaged_cjk_font", lambda: None)
    with caplog.at_level("WARNING", logger="loraflow"):
        caption, other = caption_mask(CAPTION), caption_mask(OTHER)
    assert np.array_equal(caption, other) and "no CJK font found" in caplog.text


def test_a_named_font_is_used_and_a_missing_one_is_reported(tmp_path, caplog):
    named, has_cjk = grid.find_font(24, str(grid.packaged_cjk_font()))
    assert has_cjk and named.path == str(grid.packaged_cjk_font())
    with caplog.at_level("WARNING", logger="loraflow"):
        grid.find_font(24, str(tmp_path / "missing.ttf"))
    assert f"no font file at {tmp_path / 'missing.ttf'}" in caplog.text
