"""The dataset exports training reads: DiffSynth csv, imagefolder jsonl, kohya folders, data-juicer."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from loraflow.errors import InputError
from loraflow.train.dataset import read_items


def _image(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8)).save(path)


def test_diffsynth_metadata_csv(tmp_path):
    _image(tmp_path / "train" / "0.jpg")
    (tmp_path / "train" / "metadata.csv").write_text("file_name,text\n0.jpg,二次元，女孩\n", encoding="utf-8-sig")
    (item,) = read_items(tmp_path)
    assert item.image_path == tmp_path / "train" / "0.jpg" and item.caption == "二次元，女孩" and item.repeats == 1


def test_imagefolder_jsonl(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.png", "text": "cat"}) + "\n")
    assert [i.caption for i in read_items(tmp_path)] == ["cat"]


def test_kohya_folders_with_repeats(tmp_path):
    _image(tmp_path / "10_girl" / "a.png")
    (tmp_path / "10_girl" / "a.txt").write_text("1girl, smile")
    _image(tmp_path / "2_bg" / "b.png")
    items = read_items(tmp_path)
    assert [(i.caption, i.repeats) for i in items] == [("1girl, smile", 10), ("", 2)]


def test_data_juicer_jsonl(tmp_path):
    _image(tmp_path / "img" / "x.jpg")
    line = {"text": "<__dj__image>\n二次元", "images": ["img/x.jpg"]}
    (tmp_path / "out.jsonl").write_text(json.dumps(line, ensure_ascii=False) + "\n", encoding="utf-8")
    (item,) = read_items(tmp_path / "out.jsonl")
    assert item.caption == "二次元" and item.image_path == tmp_path / "img" / "x.jpg"


def test_errors_name_the_file(tmp_path):
    with pytest.raises(InputError):
        read_items(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "metadata.csv").write_text("file_name,text\nmissing.png,x\n")
    with pytest.raises(InputError, match="missing.png"):
        read_items(tmp_path)
