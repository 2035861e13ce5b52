"""Op semantics, checked against data-juicer 1.6.1's rules (closed intervals, any/all, no image
kept, stat key names, size units, word counting)."""
import pytest
from PIL import Image, ImageFilter

from data_helpers import noise_image, save
from loraflow.data.image_hashes import _OWN, image_hash
from loraflow.data.ops.base import SampleImages
from loraflow.data.ops.registry import OPS, build_op
from loraflow.data.text_rules import count_words, size_to_bytes


def run(name, params, sample, paths=()):
    op = build_op(name, params, "text", "images", "test")
    stats = {}
    op.compute(SampleImages(list(paths)), sample, stats)
    return op.decide(stats), stats


def test_shape_any_or_all(tmp_path):
    small = save(Image.new("RGB", (100, 100)), tmp_path / "s.png")
    big = save(Image.new("RGB", (600, 600)), tmp_path / "b.png")
    params = {"min_width": 500, "min_height": 500}
    rej, stats = run("image_shape_filter", {**params, "any_or_all": "any"}, {}, [small, big])
    assert rej is None and stats == {"image_width": [100, 600], "image_height": [100, 600]}
    rej, _ = run("image_shape_filter", {**params, "any_or_all": "all"}, {}, [small, big])
    assert rej.op == "image_shape_filter" and rej.stat == "image_width"


def test_no_image_is_kept_with_empty_stats():
    for name, key in (("image_shape_filter", "image_width"), ("image_aspect_ratio_filter", "aspect_ratios"),
                      ("image_size_filter", "image_sizes"), ("image_sharpness_filter", "image_sharpness")):
        rej, stats = run(name, {}, {"text": "x"})
        assert rej is None and stats[key] == []


def test_closed_and_open_intervals_and_reversed(tmp_path):
    p = save(Image.new("RGB", (200, 100)), tmp_path / "a.png")  # ratio 2.0
    assert run("image_aspect_ratio_filter", {"min_ratio": 0.5, "max_ratio": 2.0}, {}, [p])[0] is None
    assert run("image_aspect_ratio_filter", {"max_ratio": 2.0, "max_closed_interval": False}, {}, [p])[0]
    assert run("image_aspect_ratio_filter", {"max_ratio": 2.0, "reversed_range": True}, {}, [p])[0]


def test_size_units_are_binary_like_data_juicer():
    assert size_to_bytes("1MB") == size_to_bytes("1MiB") == 1 << 20
    assert size_to_bytes("10kb") == 10240 and size_to_bytes("0") == 0 and size_to_bytes(77) == 77
    assert size_to_bytes("1TB") == 1 << 40
    for bad in ("1.5MB", "12XB", "big"):
        with pytest.raises(ValueError):
            size_to_bytes(bad)


def test_image_size_filter_reads_file_bytes(tmp_path):
    p = save(noise_image(64, 64), tmp_path / "n.png")
    n = p.stat().st_size
    rej, stats = run("image_size_filter", {"min_size": f"{n}", "max_size": "1MB"}, {}, [p])
    assert rej is None and stats["image_sizes"] == [n]
    assert run("image_size_filter", {"min_size": f"{n + 1}"}, {}, [p])[0].stat == "image_sizes"


def test_text_length_and_words():
    assert run("text_length_filter", {"min_len": 3, "max_len": 3}, {"text": "二次元"}) == (None, {"text_len": 3})
    rej, stats = run("words_num_filter", {"min_num": 10}, {"text": "a cute cat, 12 ★ sitting"})
    assert stats == {"num_words": 4} and rej.reason.startswith("4 words")  # "12" and "★" strip to nothing
    assert count_words("二次元") == 1 and count_words("  hello\tworld\nagain  ") == 3 and count_words("") == 0


def test_sharpness_separates_sharp_from_blurred(tmp_path):
    sharp = noise_image(128, 128)
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))
    p1, p2 = save(sharp, tmp_path / "s.png"), save(blurred, tmp_path / "b.png")
    assert run("image_sharpness_filter", {"min_sharpness": 100}, {}, [p1])[0] is None
    assert run("image_sharpness_filter", {"min_sharpness": 100}, {}, [p2])[0].stat == "image_sharpness"


@pytest.mark.parametrize("method", ["ahash", "dhash", "phash", "whash"])
def test_own_hashes_are_stable_and_discriminate(method):
    a, b = (noise_image(96, 64, seed=s).filter(ImageFilter.GaussianBlur(4)) for s in (1, 2))
    own = _OWN[method]

    def dist(x, y):
        return bin(int(own(x.convert("L")), 16) ^ int(own(y.convert("L")), 16)).count("1")

    assert dist(a, a) == 0 and dist(a, a.resize((192, 128))) <= 6 and dist(a, b) > 12
    assert len(own(a.convert("L"))) == 16 and len(image_hash(a, method)) == 16


def test_every_op_has_a_name_and_params():
    assert set(OPS) == {"image_shape_filter", "image_aspect_ratio_filter", "image_size_filter", "image_deduplicator",
                        "text_length_filter", "words_num_filter", "image_sharpness_filter",
                        "image_aesthetics_filter", "image_text_similarity_filter",
                        "image_captioning_mapper", "image_tagging_mapper"}
