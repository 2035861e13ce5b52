"""`data export` in the three layouts, read back by the trainer's one reader."""
import csv
import json

import pytest
from PIL import Image

from data_helpers import noise_image, save, write_manifest
from loraflow.data.export_run import export
from loraflow.data.options import ExportOptions
from loraflow.data.training_manifest import TrainingItem, read_training_items
from loraflow.errors import InputError


@pytest.fixture
def result_jsonl(tmp_path):
    a = save(noise_image(40, 30, seed=1), tmp_path / "src" / "a.jpg")
    b = save(noise_image(30, 40, "RGBA", seed=2), tmp_path / "src" / "b.png")
    return write_manifest(tmp_path / "result.jsonl", [
        {"text": "二次元", "image": [str(a)]},
        {"text": "a cat", "image": [str(b)]},
        {"text": "gone", "image": [str(tmp_path / "src" / "missing.jpg")]},
    ])


@pytest.mark.parametrize("fmt", ["diffsynth", "imagefolder", "kohya"])
def test_export_then_read_training_items(tmp_path, result_jsonl, fmt):
    out = tmp_path / fmt
    result = export(ExportOptions(result=str(result_jsonl), out=str(out), format=fmt, trigger_word="sks",
                                  repeats=3, name="anime", progress=False))
    assert len(result.written) == 2 and len(result.errored) == 1 and "does not exist" in result.errored[0]["error"]
    items = read_training_items(out)
    assert [i.caption for i in items] == ["sks, 二次元", "sks, a cat"]
    assert all(Image.open(i.image_path).mode == "RGB" for i in items)
    assert [i.repeats for i in items] == ([3, 3] if fmt == "kohya" else [1, 1])
    if fmt == "diffsynth":
        raw = (out / "train" / "metadata.csv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf")  # utf-8-sig, as the seed's pandas.to_csv writes
        rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
        assert rows == [["file_name", "text"], ["0.jpg", "sks, 二次元"], ["1.jpg", "sks, a cat"]]
        assert (out / "train" / "0.jpg").read_bytes() == (tmp_path / "src" / "a.jpg").read_bytes()  # JPEG copied as is
    if fmt == "kohya":
        assert (out / "3_anime" / "1.txt").read_text(encoding="utf-8") == "sks, a cat"


def test_reader_takes_data_juicer_jsonl_and_rejects_unknown_layouts(tmp_path, result_jsonl):
    good = write_manifest(tmp_path / "kept.jsonl", [json.loads(result_jsonl.read_text().splitlines()[0])])
    assert read_training_items(good) == [TrainingItem(tmp_path / "src" / "a.jpg", "二次元", 1)]
    with pytest.raises(InputError, match="image\\(s\\) missing"):
        read_training_items(result_jsonl)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="not a training folder"):
        read_training_items(tmp_path / "empty")


def test_export_refuses_a_non_empty_folder(tmp_path, result_jsonl):
    save(Image.new("RGB", (4, 4)), tmp_path / "o" / "train" / "old.jpg")
    with pytest.raises(InputError, match="not empty"):
        export(ExportOptions(result=str(result_jsonl), out=str(tmp_path / "o"), progress=False))
