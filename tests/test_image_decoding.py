"""Training and `loraflow score` decode pictures exactly as the data step does (one decoder,
`loraflow.images`): a transparent PNG is composited on white everywhere."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from loraflow.data.ops.base import SampleImages
from loraflow.errors import InputError
from loraflow.images import ImageError
from loraflow.score import ImageScore
from loraflow.score.run import ScoreOptions, run_score
from loraflow.train.buckets import crop_for
from loraflow.train.images import image_size, load_pixels


def _transparent_png(path):
    """64x64 RGBA: red where transparent (a colour nobody should see), blue opaque, green half-transparent."""
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :] = (255, 0, 0, 0)
    rgba[:32, :32] = (0, 0, 255, 255)
    rgba[32:, 32:] = (0, 255, 0, 128)
    Image.fromarray(rgba, "RGBA").save(path)
    return rgba


def test_a_transparent_png_trains_on_the_composite_the_filter_saw(tmp_path):
    path = tmp_path / "cutout.png"
    rgba = _transparent_png(path).astype(np.float64)

    # What the filters scored: the data step's decode of the sample's image.
    seen = np.asarray(SampleImages([str(path)]).rgb(0), dtype=np.float32)  # (H, W, 3)
    # What training feeds the VAE: a 64x64 bucket holds the whole picture, no flip.
    crop = crop_for(image_size(path), (64, 64), center=True, flip=False, rng=random.Random(0))
    trained = load_pixels(path, crop)  # (3, H, W) in [-1, 1]
    assert torch.equal(trained, torch.from_numpy(seen / 127.5 - 1.0).permute(2, 0, 1))

    # Both are "over white": rgb * a + 255 * (1 - a), independently of either decoder.
    a = rgba[..., 3:] / 255.0
    over_white = rgba[..., :3] * a + 255.0 * (1.0 - a)
    assert np.abs(seen - over_white).max() <= 1.0  # Pillow's integer alpha_composite rounds
    assert seen[0, 63].tolist() == [255, 255, 255]  # transparent red is white, not black or red
    assert trained[:, 0, 63].tolist() == [1.0, 1.0, 1.0]


def test_an_unreadable_training_image_is_one_line_input_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="bad.png: not an image") as err:
        image_size(bad)
    assert isinstance(err.value, ImageError) and "\n" not in str(err.value)


class _RecordingScorer:
    """Stands in for CLIP + aesthetic model: keeps the pictures it is asked to score."""

    aesthetic = clip = None

    def __init__(self):
        self.seen = []

    def score(self, images, prompts):
        self.seen.extend(np.asarray(im, dtype=np.float32) for im in images)
        return [ImageScore(aesthetic=None, clip=None) for _ in images]


def test_loraflow_score_scores_the_composite_the_filter_saw(tmp_path):
    path = tmp_path / "cutout.png"
    _transparent_png(path)
    scorer = _RecordingScorer()
    run_score(ScoreOptions(images=[str(path)]), scorer)
    (scored,) = scorer.seen
    assert np.array_equal(scored, np.asarray(SampleImages([str(path)]).rgb(0), dtype=np.float32))
    assert scored[0, 63].tolist() == [255, 255, 255]


def test_a_transparent_control_or_init_image_is_composited_on_white(tmp_path):
    """Reference images (ControlNet maps, img2img inputs) use the same decoder: the hidden red of a
    transparent pixel never reaches the control map."""
    from loraflow.generate.control.preprocess import load_image, make_control_map

    rgba = _transparent_png(tmp_path / "ref.png")
    loaded = np.asarray(load_image(tmp_path / "ref.png", "init_image"), dtype=np.float64)
    alpha = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)  # "over" on white, by hand
    assert np.abs(loaded - expected).max() <= 1.0
    control = np.asarray(make_control_map("tile", Image.open(tmp_path / "ref.png"), 64, 64, "control"))
    assert np.abs(control.astype(np.float64) - expected).max() <= 1.0
