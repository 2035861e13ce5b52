"""The contact sheet flags every panel tied at the lowest combined score, and none when all tie."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from loraflow.generate.contact_sheet import CELL, write_contact_sheet

RED = np.array([220, 30, 30])


def _index(combined: list) -> dict:
    return {"title": "t", "scenes": [{"index": k + 1, "file": f"scene-{k + 1:02d}.png", "prompt": "p",
                                      "title": f"s{k + 1}", "scores": {"combined": v}}
                                     for k, v in enumerate(combined)]}


def _framed(sheet: Image.Image, n: int) -> list[int]:
    """Scene numbers whose cell has the red frame: the pixel just left of the panel's top-left corner."""
    pixels = np.asarray(sheet)
    return [k + 1 for k in range(n) if np.array_equal(pixels[4 + CELL // 2, (k % 4) * (CELL + 8) + 4 - 2], RED)]


@pytest.mark.parametrize("combined,expected", [
    ([0.5, 0.2, 0.7, 0.2], [2, 4]),  # two panels tied at the lowest: both
    ([0.5, 0.1, 0.7, 0.2], [2]),
    ([0.0, 0.0, 0.0], []),  # all alike: nothing stands out
    ([None, 0.3, 0.3], []),  # the scored ones all alike
    ([None, None], []),
])
def test_every_panel_tied_at_the_lowest_is_flagged(tmp_path, combined, expected):
    images = [Image.new("RGB", (16, 16), (0, 120, 0))] * len(combined)
    made = write_contact_sheet(tmp_path, _index(combined), images)
    assert made["weakest"] == expected
    assert _framed(Image.open(tmp_path / made["png"]).convert("RGB"), len(combined)) == expected
    page = (tmp_path / made["html"]).read_text(encoding="utf-8")
    assert page.count('class="weakest"') == len(expected) == page.count('class="flag"')
