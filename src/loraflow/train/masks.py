"""Masked loss: a per-pixel weight for each training image (kohya `--masked_loss`, OneTrainer masks).

Where an item's mask comes from, first found wins:
  1. the metadata's mask column (`mask_column`, default `mask`): a path relative to the metadata file,
  2. NAME_mask.png beside the image NAME.*,
  3. the image's own alpha channel (transparent = 0),
and an item with none of them trains on every pixel. White (255) is full weight, black (0) none,
grey in between. The mask goes through exactly the image's geometry (`images.load_pixels`): EXIF
rotation, resize to cover the bucket with the same filter, the same crop and the same flip. It is
then area-averaged down to latent resolution, where it weights the squared error.
"""
from __future__ import annotations

from pathlib import Path

from loraflow.errors import InputError
from loraflow.train.buckets import Crop
from loraflow.train.images import image_size

ALPHA = "alpha"  # mask source: the image's own alpha channel


def mask_source(image_path: Path, column_mask: Path | None) -> Path | str | None:
    """The mask file, ALPHA, or None (no mask: every pixel counts)."""
    if column_mask is not None:
        return column_mask
    beside = image_path.with_name(f"{image_path.stem}_mask.png")
    if beside.is_file():
        return beside
    from PIL import Image

    try:
        with Image.open(image_path) as image:
            has_alpha = "A" in image.getbands() or "transparency" in image.info
    except (OSError, ValueError) as e:
        raise InputError(f"{image_path}: cannot read image: {e}") from None
    return ALPHA if has_alpha else None


def _open_mask(image_path: Path, source: Path | str):
    """Mask as a PIL "L" image at the image's (EXIF-rotated) size."""
    from PIL import Image, ImageOps

    path = image_path if source == ALPHA else Path(source)
    try:
        image = ImageOps.exif_transpose(Image.open(path))
        if source == ALPHA:
            return image.convert("RGBA").getchannel("A")
        mask = image.convert("L")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read mask: {e}") from None
    size = image_size(image_path)  # displayed (EXIF-rotated) size, from the header: no second decode
    if mask.size != size:
        raise InputError(f"{path}: mask is {mask.size[0]}x{mask.size[1]}, its image {image_path.name} is "
                         f"{size[0]}x{size[1]}; a mask must have its image's size")
    return mask


def load_mask(image_path: Path, source: Path | str, crop: Crop):
    """(1, H, W) float32 weights in [0, 1] for the bucket's H, W, aligned with `load_pixels(image, crop)`."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    mask = _open_mask(image_path, source).resize(crop.resized, Image.Resampling.LANCZOS)  # the image's filter
    mask = mask.crop((crop.left, crop.top, crop.left + crop.bucket[0], crop.top + crop.bucket[1]))
    if crop.flip:
        mask = ImageOps.mirror(mask)
    array = np.asarray(mask, dtype=np.float32) / 255.0  # (H, W)
    return torch.from_numpy(array).clamp(0.0, 1.0)[None]


class Masks:
    """Loss weights of a run's items at latent resolution; None for a batch where nothing is masked."""

    def __init__(self, items: list, enabled: bool):
        self.items, self.enabled = items, enabled
        self.sources = [mask_source(i.image_path, i.mask) if enabled else None for i in items]

    def weights(self, entries: list, latent_shape) -> "torch.Tensor | None":  # noqa: F821
        """(B, 1, h, w) weights for a batch of `buckets.Entry` whose latents are `latent_shape` (B, C, h, w)."""
        import torch
        import torch.nn.functional as F

        if all(self.sources[e.item] is None for e in entries):
            return None
        h, w = latent_shape[-2:]
        out = []
        for e in entries:
            source = self.sources[e.item]
            if source is None:
                out.append(torch.ones(1, h, w))
                continue
            pixels = load_mask(self.items[e.item].image_path, source, e.crop)  # (1, H, W)
            out.append(F.interpolate(pixels[None], size=(h, w), mode="area")[0])  # mean over each latent cell
        return torch.stack(out)
