"""Perceptual image hashes for `image_deduplicator`: ahash, dhash, phash, whash.

Uses the `imagehash` package when it is installed; otherwise our own numpy versions of the same
algorithms (Kravetz's ahash/dhash/phash; whash as a Haar-wavelet low band). data-juicer itself
uses `imagededup`'s hashers, so hash *strings* differ between tools; what is shared is the rule:
two samples are duplicates when their hash strings are equal, and the first one is kept.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

HASH_METHODS = ("phash", "dhash", "whash", "ahash")


def image_hash(im: Image.Image, method: str) -> str:
    """Hex string of a 64-bit hash of `im` (any mode)."""
    try:
        import imagehash
    except ImportError:
        return _OWN[method](im.convert("L"))
    fn = {"ahash": imagehash.average_hash, "dhash": imagehash.dhash, "phash": imagehash.phash,
          "whash": imagehash.whash}[method]
    return str(fn(im))


def _bits_to_hex(bits: np.ndarray) -> str:
    # (64,) bool -> 16 hex chars, most significant bit first (imagehash's order)
    value = 0
    for b in bits.flatten():
        value = (value << 1) | int(b)
    return f"{value:0{(bits.size + 3) // 4}x}"


def _small(gray: Image.Image, w: int, h: int) -> np.ndarray:
    return np.asarray(gray.resize((w, h), Image.Resampling.LANCZOS), dtype=np.float64)


def _ahash(gray: Image.Image) -> str:
    a = _small(gray, 8, 8)
    return _bits_to_hex(a > a.mean())


def _dhash(gray: Image.Image) -> str:
    a = _small(gray, 9, 8)  # (8, 9): compare horizontal neighbours
    return _bits_to_hex(a[:, 1:] > a[:, :-1])


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * i + 1) * k / (2 * n))  # DCT-II basis, unnormalised (sign is all we use)


_D32 = _dct_matrix(32)


def _phash(gray: Image.Image) -> str:
    a = _small(gray, 32, 32)
    low = (_D32 @ a @ _D32.T)[:8, :8]  # (8, 8) lowest frequencies
    return _bits_to_hex(low > np.median(low))


def _whash(gray: Image.Image) -> str:
    a = _small(gray, 64, 64) / 255.0
    for _ in range(3):  # three Haar levels: 64 -> 32 -> 16 -> 8, keep the LL band
        a = (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4.0
    return _bits_to_hex(a > np.median(a))


_OWN = {"ahash": _ahash, "dhash": _dhash, "phash": _phash, "whash": _whash}
