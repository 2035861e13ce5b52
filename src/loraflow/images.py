"""Opening images safely: header-only reads for sizes, full decodes converted to 8-bit RGB.

The one decoder for pictures people bring: the data step (filters, export, ingest), training and
`loraflow score` all call `load_rgb` / `read_info`, so a transparent PNG trains on the same white
composite the filters scored.

Every failure becomes an `ImageError` with a one-line reason that names the file, so callers
can record the item as errored and keep going.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageOps

from loraflow.errors import InputError

# Pillow's own bomb guard (~89 Mpx warns, 2x that raises); both are errors for us.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


class ImageError(InputError):
    """One image could not be used; the message is the per-item reason (a data step records it as
    errored and goes on; training stops with it as a one-line error)."""


@dataclass
class ImageInfo:
    """What a header read tells us (no pixel decode)."""

    width: int
    height: int
    format: str | None
    mode: str
    notes: list[str] = field(default_factory=list)


def _open(path: str | os.PathLike) -> Image.Image:
    """`Image.open` with every failure turned into a one-line `ImageError`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(f"{path}: file does not exist") from None
    except OSError as e:
        raise ImageError(f"{path}: cannot stat: {e.strerror or e}") from None
    if not path.is_file():
        raise ImageError(f"{path}: not a regular file")
    if size == 0:
        raise ImageError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{path}: refused as a decompression bomb ({_first_line(e)})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read ({_sniff(path)})") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot open: {_first_line(e)}") from None


def read_info(path: str | os.PathLike, check_tail: bool = True) -> ImageInfo:
    """Width/height/format from the header only (Pillow opens lazily; no pixels are decoded).

    Sizes are as displayed, i.e. after EXIF orientation, which is what data-juicer measures
    (its loader, `datasets.Image.decode_example`, applies `exif_transpose`).

    `check_tail` also reads the last bytes of JPEG/PNG files, which catches truncated files
    without decoding them (a full decode would be ~100x slower).
    """
    with _open(path) as im:
        w, h = im.size
        try:
            if im.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF says "display rotated by 90 degrees"
                w, h = h, w
        except Exception:  # a broken EXIF block: report the stored size
            pass
        info = ImageInfo(w, h, im.format, im.mode)
    if check_tail:
        problem = _tail_problem(Path(path), info.format)
        if problem:
            raise ImageError(f"{path}: {problem}")
    return info


def load_rgb(path: str | os.PathLike, notes: list[str] | None = None) -> Image.Image:
    """Fully decode to 8-bit RGB: EXIF orientation applied, alpha composited on white,
    16-bit scaled down, CMYK/palette converted, first frame of animations (noted in `notes`)."""
    im = _open(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            frames = getattr(im, "n_frames", 1)
            if frames > 1:
                im.seek(0)
                if notes is not None:
                    notes.append(f"animated {im.format} with {frames} frames: took the first frame")
            im.load()
            return to_rgb(im)
    except ImageError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{path}: cannot decode: {_first_line(e)}") from None
    finally:
        im.close()


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit RGB, the way a person would expect it to look."""
    try:
        im = ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block must not cost us the image; orientation stays as stored
        pass
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        a = np.asarray(im, dtype=np.float64)  # (H, W), 16-bit range for PNG
        top = 65535.0 if a.max() > 255 else 255.0
        im = Image.fromarray((a * (255.0 / top)).round().clip(0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        im = im.convert("L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _tail_problem(path: Path, fmt: str | None) -> str | None:
    if fmt not in ("JPEG", "PNG"):
        return None
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            n = f.tell()
            f.seek(max(0, n - 4096))
            tail = f.read()
    except OSError as e:
        return f"cannot read: {e.strerror or e}"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated PNG (no IEND chunk)"
    return None


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return "unreadable"
    try:
        text = head.decode("utf-8")
        if text.isprintable() or all(c.isprintable() or c.isspace() for c in text):
            return f"looks like text: {text[:24]!r}"
    except UnicodeDecodeError:
        pass
    return f"starts with bytes {head[:8].hex(' ')}"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
