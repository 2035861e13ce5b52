"""Image files -> training pixels: resize to cover the bucket, crop, flip, scale to [-1, 1].

Decoding is the data step's (`loraflow.images.load_rgb`): EXIF rotation, alpha on white, 16-bit and
CMYK handled the same way the filters saw the picture.
"""
from __future__ import annotations

from pathlib import Path

from loraflow.images import load_rgb, read_info
from loraflow.train.buckets import Crop


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) after EXIF rotation, from the header only."""
    info = read_info(path, check_tail=False)
    return info.width, info.height


def load_pixels(path: Path, crop: Crop):
    """(3, H, W) float32 in [-1, 1], H, W = the bucket's height and width."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    image = load_rgb(path).resize(crop.resized, Image.Resampling.LANCZOS)
    image = image.crop((crop.left, crop.top, crop.left + crop.bucket[0], crop.top + crop.bucket[1]))
    if crop.flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
