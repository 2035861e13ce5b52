"""`data ingest`: folder / manifest / hub sources -> RGB JPEGs + metadata.jsonl (the seed's layout)."""
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from data_helpers import make_awkward_images, make_bad_inputs, noise_image, save, write_manifest
from loraflow.data.ingest_run import ingest
from loraflow.data.options import IngestOptions
from loraflow.errors import ConfigError, InputError


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def opts(source, out, **kw):
    return IngestOptions(source=str(source), out=str(out), progress=False, np=1, **kw)


def test_folder_with_kohya_captions_and_every_bad_file(tmp_path):
    src = tmp_path / "src"
    save(noise_image(50, 40, seed=1), src / "a.jpg")
    (src / "a.txt").write_text("a girl, smiling\n", encoding="utf-8")
    save(noise_image(50, 40, seed=2), src / "b.png")  # no caption -> --caption
    save(noise_image(50, 40, seed=3), src / "c.jpg")
    (src / "c.txt").write_bytes("二次元".encode("gb18030"))  # not UTF-8
    shutil.copyfile(src / "a.jpg", src / "a_copy.jpg")  # duplicate pixels
    (src / "notes.md").write_text("not a picture")
    awkward = make_awkward_images(src / "awkward")
    bad = {k: v for k, v in make_bad_inputs(src / "bad").items() if k != "missing"}

    result = ingest(opts(src, tmp_path / "out", caption="二次元"))

    rows = read(tmp_path / "out" / "metadata.jsonl")
    assert all(set(r) == {"text", "image"} and len(r["image"]) == 1 for r in rows)
    assert all(Image.open(r["image"][0]).mode == "RGB" for r in rows)
    captions = {Path(r["image"][0]).name: r["text"] for r in rows}
    assert "a girl, smiling" in captions.values() and list(captions.values()).count("二次元") == 1 + len(awkward)
    assert len(rows) == 2 + len(awkward)
    skipped = read(tmp_path / "out" / "skipped.jsonl")
    assert sorted(s["reason"].split(":")[0] for s in skipped) == ["duplicate", "not an image by its extension (.md)"]
    errored = read(tmp_path / "out" / "errored.jsonl")
    assert len(errored) == len(bad) + 1 and any("is not UTF-8" in e["error"] for e in errored)
    assert len(rows) + len(skipped) + len(errored) == 5 + len(awkward) + len(bad)  # .txt captions are not items
    assert any("first frame" in n for n in result.notes)
    assert result.summary().startswith(f"{len(rows) + len(skipped) + len(errored)} in:")


def test_manifest_refuses_paths_escaping_its_root(tmp_path):
    root = tmp_path / "ds"
    save(noise_image(20, 20), root / "img" / "ok.jpg")
    save(noise_image(20, 20, seed=9), tmp_path / "outside.jpg")
    manifest = write_manifest(root / "m.jsonl", [
        {"text": "fine", "image": ["img/ok.jpg"]},
        {"text": "escape", "image": ["../../etc/passwd"]},
        {"text": "absolute outside", "image": [str(tmp_path / "outside.jpg")]},
        {"text": "missing", "image": ["img/nope.jpg"]},
        "not json at all",
    ])
    result = ingest(opts(manifest, tmp_path / "out"))
    assert [r["text"] for r in result.written] == ["fine"]
    errors = [e["error"] for e in result.errored]
    assert sum("escapes the dataset root" in e for e in errors) == 2
    assert any("does not exist" in e for e in errors) and any("not JSON" in e for e in errors)
    widened = ingest(opts(manifest, tmp_path / "out2", root=str(tmp_path)))
    assert len(widened.written) == 2  # --root widens it; ../../etc/passwd still leaves tmp_path


def test_csv_manifest_as_the_seed_writes_it(tmp_path):
    save(noise_image(20, 20), tmp_path / "0.jpg")
    (tmp_path / "metadata.csv").write_text("file_name,text\n0.jpg,二次元\n", encoding="utf-8-sig")
    result = ingest(opts(tmp_path / "metadata.csv", tmp_path / "out"))
    assert [r["text"] for r in result.written] == ["二次元"]


def test_huggingface_dataset_through_the_same_path(tmp_path):
    import datasets
    ds = datasets.Dataset.from_dict({"image": [noise_image(30, 20, "RGBA", seed=1), noise_image(20, 30, "L", seed=2)],
                                     "text": ["one", "two"]}).cast_column("image", datasets.Image())
    calls = []

    def loader(name, subset, split, cache_dir):
        calls.append((name, subset, split))
        return ds

    result = ingest(opts("hf:someone/tiny:validation", tmp_path / "out"), hub_loader=loader)
    assert calls == [("someone/tiny", None, "validation")]
    assert [r["text"] for r in result.written] == ["one", "two"]
    assert all(Image.open(r["image"][0]).mode == "RGB" for r in result.written)


def test_modelscope_dataset_with_seed_arguments(tmp_path):
    seen = {}

    class FakeMsDataset:  # what MsDataset.load returns: an iterable of {"image": PIL.Image, ...}
        def __iter__(self):
            yield {"image": noise_image(16, 16, "P", seed=1)}
            yield {"image": None}

    def load(name, subset_name, split, cache_dir):
        seen.update(name=name, subset_name=subset_name, split=split, cache_dir=cache_dir)
        return FakeMsDataset()

    result = ingest(opts("ms:AI-ModelScope/lowres_anime", tmp_path / "out", caption="二次元",
                         cache_dir=str(tmp_path / "cache")), hub_loader=load)
    assert seen == {"name": "AI-ModelScope/lowres_anime", "subset_name": "default", "split": "train",
                    "cache_dir": str(tmp_path / "cache")}
    assert [r["text"] for r in result.written] == ["二次元"] and len(result.errored) == 1


def test_hub_errors_are_one_line(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise ConnectionError("Couldn't reach huggingface.co\nlong traceback text")

    with pytest.raises(InputError, match="check the name and your network") as e:
        ingest(opts("hf:x/y", tmp_path / "o"), hub_loader=offline)
    assert "\n" not in str(e.value)
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'loraflow\[hf\]'"):
        ingest(opts("hf:x/y", tmp_path / "o"))
    monkeypatch.setitem(sys.modules, "modelscope", None)
    monkeypatch.setitem(sys.modules, "modelscope.msdatasets", None)
    with pytest.raises(ConfigError, match=r"pip install 'loraflow\[modelscope\]'"):
        ingest(opts("ms:AI-ModelScope/lowres_anime", tmp_path / "o"))


def test_unknown_source_is_one_line(tmp_path):
    with pytest.raises(InputError, match="no such folder or file"):
        ingest(opts(tmp_path / "nothing", tmp_path / "o"))
