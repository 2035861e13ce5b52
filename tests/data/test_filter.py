"""`data filter`: the seed recipe unchanged, hand-computed kept/rejected sets, bad inputs, counts."""
import json
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image, ImageFilter

from data_helpers import make_awkward_images, make_bad_inputs, noise_image, save, write_manifest
from loraflow.data.filter_run import filter_dataset
from loraflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SEED_RECIPE = REPO / "examples" / "recipes" / "seed-anime.yaml"

# (width, height, mode, kept by the seed recipe?) -- keep iff w >= 1024 and h >= 1024 and
# 0.5 <= w/h <= 2.0, both bounds inclusive (data-juicer's closed intervals).
SEED_CASES = [
    (1024, 1024, "RGB", True), (1023, 1024, "RGB", False), (1024, 1023, "RGB", False),
    (2048, 1024, "RGB", True), (2049, 1024, "RGB", False), (1024, 2048, "RGB", True),
    (1024, 2049, "RGB", False), (3000, 1200, "RGB", False), (1500, 1100, "RGB", True),
    (512, 512, "RGB", False), (1200, 1200, "L", True), (1100, 1300, "RGBA", True),
]


def read(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def seed_layout(root: Path, rows: list) -> Path:
    """The seed's folders: ./data/data-juicer/input/metadata.jsonl under the working directory."""
    return write_manifest(root / "data" / "data-juicer" / "input" / "metadata.jsonl", rows)


def test_seed_recipe_is_the_tutorials_verbatim():
    # the shared material sits beside the checkout (../shared) or inside it (shared/), never at a fixed path
    seeds = [p for folder in (REPO / "shared" / "seed", REPO.parent / "shared" / "seed") for p in folder.glob("*.txt")]
    if not seeds:
        pytest.skip("tutorial text not available here")
    text = seeds[0].read_text(encoding="utf-8")
    assert SEED_RECIPE.read_text(encoding="utf-8").strip() in text


# auto-captions.yaml names local model folders; test_mappers.py runs it on tiny models instead
@pytest.mark.parametrize("path", sorted(p for p in (REPO / "examples" / "recipes").glob("*.yaml")
                                        if p.name != "auto-captions.yaml"), ids=lambda p: p.name)
def test_example_recipes_load(path):
    from loraflow.data.recipe import load_recipe

    recipe, ops = load_recipe(path)
    assert ops and recipe.export_path.endswith(".jsonl")


def test_seed_recipe_unchanged_matches_hand_computed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows, expected_kept = [], []
    for i, (w, h, mode, kept) in enumerate(SEED_CASES):
        p = save(Image.new(mode, (w, h), 128 if mode == "L" else (i * 20, 90, 160, 255)[: len(mode)]),
                 tmp_path / "imgs" / f"{i}.{'png' if mode == 'RGBA' else 'jpg'}")
        rows.append({"text": "二次元", "image": [str(p)]})
        if kept:
            expected_kept.append(str(p))
    rows.append({"text": "no picture", "image": []})  # kept: data-juicer keeps samples without images
    expected_kept.append(None)
    seed_layout(tmp_path, rows)

    result = filter_dataset(SEED_RECIPE, progress=False)

    out = tmp_path / "data" / "data-juicer" / "output"
    kept = read(out / "result.jsonl")
    assert [r["image"][0] if r["image"] else None for r in kept] == expected_kept
    assert all("__dj__stats__" not in r for r in kept)  # dropped, as data-juicer does by default
    stats = read(out / "result_stats.jsonl")
    assert stats[0]["__dj__stats__"] == {"image_width": [1024], "image_height": [1024], "aspect_ratios": [1.0]}
    rejected = read(out / "result_rejected.jsonl")
    by_op = {r["image"][0].rsplit("/", 1)[1]: r["__loraflow__"]["op"] for r in rejected}
    assert by_op == {"1.jpg": "image_shape_filter", "2.jpg": "image_shape_filter", "4.jpg": "image_aspect_ratio_filter",
                     "6.jpg": "image_aspect_ratio_filter", "7.jpg": "image_aspect_ratio_filter", "9.jpg": "image_shape_filter"}
    assert len(kept) + len(rejected) + len(read(out / "result_errored.jsonl")) == len(rows) == result.total


def test_relative_image_paths_are_relative_to_the_dataset_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save(Image.new("RGB", (1024, 1024)), tmp_path / "data" / "data-juicer" / "input" / "a.jpg")
    seed_layout(tmp_path, [{"text": "x", "image": ["a.jpg"]}])
    result = filter_dataset(SEED_RECIPE, progress=False)
    assert len(result.kept) == 1
    assert result.kept[0]["image"][0] == str(tmp_path / "data" / "data-juicer" / "input" / "a.jpg")


def test_every_bad_input_is_errored_with_a_reason_and_nothing_is_lost(tmp_path):
    bad = make_bad_inputs(tmp_path / "bad")
    awkward = make_awkward_images(tmp_path / "awkward")
    good = save(noise_image(64, 64, seed=5), tmp_path / "good.jpg")
    rows = [{"text": "t", "image": [str(p)]} for p in [*bad.values(), *awkward.values(), good, good]]
    rows += ["{not json", "[1, 2]", b"{\"text\": \"\xff\xfe\", \"image\": []}", {"text": "t", "image": 7}]
    manifest = write_manifest(tmp_path / "in.jsonl", rows)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(manifest), "export_path": str(tmp_path / "out" / "kept.jsonl"), "image_key": "image", "np": 1,
        "process": [{"image_shape_filter": {"min_width": 1, "min_height": 1}},
                    {"image_deduplicator": {"method": "phash"}}],
    }))
    result = filter_dataset(recipe, progress=False)

    assert result.total == len(rows)
    errors = [r["__loraflow__"]["error"] for r in read(tmp_path / "out" / "kept_errored.jsonl")]
    assert len(errors) == len(bad) + 4
    for words in ("empty file", "truncated JPEG", "truncated PNG", "looks like text", "decompression bomb",
                  "does not exist", "not JSON", "expected an object", "not UTF-8", "list of image paths"):
        assert sum(words in e for e in errors) == 1, words
    assert len(result.kept) == len(awkward) + 1  # every awkward image is fine; the second `good` is a duplicate
    dup = read(tmp_path / "out" / "kept_rejected.jsonl")
    assert [r["__loraflow__"]["op"] for r in dup] == ["image_deduplicator"]
    assert "duplicate of the sample on line" in dup[0]["__loraflow__"]["reason"]


def test_skimage_photos_shape_sharpness_and_dedup(tmp_path):
    import skimage.data as data

    photos = {"astronaut": data.astronaut(), "chelsea": data.chelsea(), "coffee": data.coffee(), "camera": data.camera()}
    paths = {n: save(Image.fromarray(a), tmp_path / f"{n}.png") for n, a in photos.items()}
    paths["astronaut_blurred"] = save(Image.open(paths["astronaut"]).filter(ImageFilter.GaussianBlur(4)),
                                      tmp_path / "astronaut_blurred.png")
    paths["astronaut_copy"] = tmp_path / "astronaut_copy.png"
    shutil.copyfile(paths["astronaut"], paths["astronaut_copy"])
    manifest = write_manifest(tmp_path / "in.jsonl", [{"text": n, "images": [str(p)]} for n, p in paths.items()])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(manifest), "export_path": str(tmp_path / "kept.jsonl"), "np": 2,
        "process": [{"image_shape_filter": {"min_width": 450, "min_height": 350}},  # chelsea is 451x300
                    {"image_sharpness_filter": {"min_sharpness": 50}},
                    {"image_deduplicator": {"method": "phash"}}],
    }))
    result = filter_dataset(recipe, progress=False)
    assert [r["text"] for r in result.kept] == ["astronaut", "coffee", "camera"]
    why = {r["text"]: r["__loraflow__"]["op"] for r in result.rejected}
    assert why == {"chelsea": "image_shape_filter", "astronaut_blurred": "image_sharpness_filter",
                   "astronaut_copy": "image_deduplicator"}


def test_process_pool_gives_the_same_answer_as_serial(tmp_path):
    rows = []
    for i in range(80):
        w, h = 200 + (i * 37) % 900, 200 + (i * 53) % 900
        rows.append({"text": f"img {i}", "images": [str(save(Image.new("RGB", (w, h)), tmp_path / f"{i}.png"))]})
    manifest = write_manifest(tmp_path / "in.jsonl", rows)
    outs = []
    for np_ in (1, 2):
        recipe = tmp_path / f"r{np_}.yaml"
        recipe.write_text(yaml.safe_dump({
            "dataset_path": str(manifest), "export_path": str(tmp_path / f"k{np_}.jsonl"), "np": np_,
            "process": [{"image_shape_filter": {"min_width": 400}}, {"image_aspect_ratio_filter": {"max_ratio": 1.5}}]}))
        outs.append(filter_dataset(recipe, progress=False))
    assert outs[0].kept == outs[1].kept and outs[0].rejected == outs[1].rejected
    assert 0 < len(outs[0].kept) < 80


@pytest.mark.parametrize("change, words", [
    ({"process": [{"image_shap_filter": {}}]}, "unknown op 'image_shap_filter'; loraflow knows: image_aesthetics_filter, image_aspect_ratio_filter"),
    ({"process": [{"image_shape_filter": {"min_width": "big"}}]}, "key 'min_width' = 'big'"),
    ({"process": [{"image_shape_filter": {"min_wdith": 3}}]}, "unknown key 'min_wdith'"),
    ({"process": [{"image_size_filter": {"max_size": "1.5MB"}}]}, "'1536KB'"),
    ({"process": [{"image_aesthetics_filter": {}}]}, "hf_scorer_model is required: the path of local model weights"),
    ({"process": [{"image_nsfw_filter": {}}]}, "not available in loraflow yet; needs model weights"),
    ({"process": [{"words_num_filter": {"tokenization": True}}]}, "not available in loraflow yet"),
    ({"dataset_path": None}, "missing 'dataset_path'"),
    ({"np": 0}, "key 'np' = 0"),
    ({"surprise": 1}, "unknown key 'surprise'"),
])
def test_bad_recipes_fail_in_one_line_before_any_work(tmp_path, change, words):
    recipe = {"dataset_path": str(tmp_path / "missing.jsonl"), "export_path": str(tmp_path / "o.jsonl"),
              "process": [{"image_shape_filter": {}}]}
    recipe.update(change)
    recipe = {k: v for k, v in recipe.items() if v is not None}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError) as e:
        filter_dataset(path, progress=False)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_wrong_image_key_is_warned_about(tmp_path, caplog):
    """data-juicer keeps samples without images; a recipe whose image_key matches no field would keep
    everything silently, so loraflow warns and names the fields it saw."""
    import json as _json

    import yaml as _yaml
    from PIL import Image as _Image

    from loraflow.data.filter_run import filter_dataset

    _Image.new("RGB", (10, 10)).save(tmp_path / "a.png")
    (tmp_path / "in.jsonl").write_text(_json.dumps({"text": "x", "image": [str(tmp_path / "a.png")]}) + "\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_yaml.safe_dump({"dataset_path": str(tmp_path / "in.jsonl"), "export_path": str(tmp_path / "o.jsonl"),
                                       "process": [{"image_shape_filter": {"min_width": 100}}]}))
    with caplog.at_level("WARNING"):
        result = filter_dataset(recipe, progress=False)
    assert len(result.kept) == 1  # data-juicer's rule, kept as it is
    assert "no sample has the field 'images'" in caplog.text and "image, text" in caplog.text
