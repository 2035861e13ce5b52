"""Masked loss: the mask follows the image's resize/crop/flip, and a masked-out region contributes nothing."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from train_helpers import base_config
from loraflow.train.buckets import crop_for
from loraflow.train.images import load_pixels
from loraflow.train.masks import ALPHA, Masks, load_mask, mask_source
from loraflow.train.objective import diffusion_loss

W, H = 96, 64  # a landscape image: resized to cover a square bucket, then cropped


def _pattern(tmp_path: Path) -> tuple[Path, Path]:
    """An image that is white exactly where its mask is white (an off-centre rectangle), black elsewhere."""
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[8:40, 10:50] = 255
    image = np.repeat(mask[:, :, None], 3, axis=2)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    return tmp_path / "a.png", tmp_path / "a_mask.png"


@pytest.mark.parametrize("flip", [False, True])
def test_mask_goes_through_the_image_geometry(tmp_path, flip):
    image, mask = _pattern(tmp_path)
    assert mask_source(image, None) == mask
    crop = crop_for((W, H), (64, 64), center=True, flip=flip, rng=None)
    pixels = load_pixels(image, crop)  # (3, 64, 64) in [-1, 1]
    weights = load_mask(image, mask, crop)  # (1, 64, 64) in [0, 1]
    assert weights.shape == (1, 64, 64)
    # the image's white pixels are exactly the mask's white pixels, after resize, crop and flip
    assert torch.equal(pixels[0] > 0, weights[0] > 0.5)
    assert 0.1 < (weights > 0.5).float().mean() < 0.5


def test_alpha_channel_is_the_mask(tmp_path):
    rgba = np.zeros((64, 64, 4), dtype=np.uint8)
    rgba[:, :32, 3] = 255  # left half opaque
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert mask_source(tmp_path / "t.png", None) == ALPHA
    weights = load_mask(tmp_path / "t.png", ALPHA, crop_for((64, 64), (64, 64), True, False, None))
    assert torch.equal(weights[0, :, :32], torch.ones(64, 32)) and torch.equal(weights[0, :, 32:], torch.zeros(64, 32))
    Image.new("RGB", (64, 64)).save(tmp_path / "plain.png")
    assert mask_source(tmp_path / "plain.png", None) is None


def test_a_masked_out_region_contributes_nothing(tmp_path):
    from diffusers import DDPMScheduler

    image, mask = _pattern(tmp_path)
    crop = crop_for((W, H), (64, 64), center=True, flip=True, rng=None)

    class Item:
        image_path, mask = image, None

    class Entry:
        item = 0

    Entry.crop = crop
    weights = Masks([Item], enabled=True).weights([Entry], (1, 4, 8, 8))  # (1, 1, 8, 8) at latent resolution
    out = weights[0, 0] == 0  # latent cells wholly masked out
    assert out.any() and (~out).any()
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    t = torch.tensor([500])
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    pred = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = diffusion_loss(pred, target, t, scheduler, "epsilon", None, weight=weights)
    loss.backward()
    assert torch.all(pred.grad[:, :, out] == 0) and torch.all(pred.grad[:, :, ~out] != 0)
    # changing the prediction only inside the masked-out cells leaves the loss as it was
    changed = pred.detach().clone()
    changed[:, :, out] += 5.0
    assert diffusion_loss(changed, target, t, scheduler, "epsilon", None, weight=weights) == loss.detach()
    # and the loss is the mean squared error over the cells that count, weighted by hand
    w = weights.expand(1, 4, 8, 8)
    by_hand = ((pred.detach() - target) ** 2 * w).sum() / w.sum()
    torch.testing.assert_close(loss.detach(), by_hand)


def test_training_on_fully_masked_images_learns_nothing(tmp_path, shapes_dataset):
    """Through the whole loop: masks from the metadata column, all black -> zero loss -> the LoRA's
    up-projections (initialised to zero) stay zero."""
    from loraflow.train.trainer import train

    rows = list(csv.DictReader(open(shapes_dataset / "train" / "metadata.csv", encoding="utf-8-sig")))
    data = tmp_path / "masked"
    data.mkdir()
    for r in rows:
        Image.open(shapes_dataset / "train" / r["file_name"]).save(data / r["file_name"])
        Image.new("L", (64, 64), 0).save(data / ("m_" + r["file_name"]))
    with open(data / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text", "region"])
        writer.writeheader()
        writer.writerows({**r, "region": "m_" + r["file_name"]} for r in rows)
    result = train(base_config(tmp_path, data, max_steps=2, masked_loss=True, mask_column="region",
                               weight_decay=0.0))
    assert all(loss == 0.0 for _, loss in result.losses)
    state = load_file(result.output / "checkpoints" / "step-000002" / "lora.safetensors")
    ups = [k for k in state if "lora_B" in k]
    assert ups and all(torch.count_nonzero(state[k]) == 0 for k in ups)


def test_a_mask_of_another_size_is_a_one_line_error(tmp_path):
    """The size compared is the image's displayed one: an EXIF-rotated 40x24 photo shows 24x40."""
    from loraflow.errors import InputError

    photo = Image.new("RGB", (40, 24), "white")
    exif = photo.getexif()
    exif[0x0112] = 6  # "display rotated by 90 degrees"
    photo.save(tmp_path / "p.jpg", exif=exif)
    Image.new("L", (24, 40), 255).save(tmp_path / "p_mask.png")  # the displayed size: accepted
    Image.new("L", (40, 24), 255).save(tmp_path / "q_mask.png")  # the stored size: refused
    crop = crop_for((24, 40), (24, 40), True, False, None)
    assert load_mask(tmp_path / "p.jpg", tmp_path / "p_mask.png", crop).shape == (1, 40, 24)
    with pytest.raises(InputError) as e:
        load_mask(tmp_path / "p.jpg", tmp_path / "q_mask.png", crop)
    assert "mask is 40x24, its image p.jpg is 24x40" in str(e.value) and "\n" not in str(e.value)
