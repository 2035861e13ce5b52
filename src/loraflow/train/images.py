"""Image files -> training pixels: resize to cover the bucket, crop, flip, scale to [-1, 1]."""
from __future__ import annotations

import hashlib
from pathlib import Path

from loraflow.errors import InputError
from loraflow.train.buckets import Crop


def open_rgb(path: Path):
    from PIL import Image, ImageOps

    try:
        image = Image.open(path)
        image = ImageOps.exif_transpose(image)  # phone photos: honour the EXIF rotation
        return image.convert("RGB")
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read image: {e}") from None


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) after EXIF rotation, reading only the header where possible."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            w, h = image.size
            orientation = image.getexif().get(0x0112, 1)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read image: {e}") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def load_pixels(path: Path, crop: Crop):
    """(3, H, W) float32 in [-1, 1], H, W = the bucket's height and width."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    image = open_rgb(path).resize(crop.resized, Image.Resampling.LANCZOS)
    image = image.crop((crop.left, crop.top, crop.left + crop.bucket[0], crop.top + crop.bucket[1]))
    if crop.flip:
        image = ImageOps.mirror(image)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0  # (H, W, 3)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()
