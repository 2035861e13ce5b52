"""Helpers for the data tests: images generated under tmp_path (varied sizes, aspects, modes)
and the bad inputs the data layer must survive. Nothing is downloaded.

(A uniquely named module, not conftest.py, so `import` cannot pick up another folder's conftest.)"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def noise_image(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    return rgb if mode == "RGB" else rgb.convert(mode)


def save(im: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, **kw)
    return path


def write_manifest(path: Path, rows: list) -> Path:
    """rows: dicts (written as JSON) or raw strings/bytes (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in rows:
            line = r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)).encode()
            f.write(line + b"\n")
    return path


def png_with_declared_size(path: Path, w: int, h: int) -> Path:
    """A tiny valid PNG whose IHDR claims w x h: a decompression bomb by its header."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", w, h) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    return path


def make_bad_inputs(d: Path) -> dict[str, Path]:
    """Every kind of bad (or merely awkward) image file, by name."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    out["zero_byte"] = d / "zero.jpg"
    out["zero_byte"].write_bytes(b"")
    full = io.BytesIO()
    noise_image(64, 48).save(full, "JPEG")
    out["truncated_jpeg"] = d / "trunc.jpg"
    out["truncated_jpeg"].write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    full = io.BytesIO()
    noise_image(64, 48).save(full, "PNG")
    out["truncated_png"] = d / "trunc.png"
    out["truncated_png"].write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    out["text_as_jpg"] = d / "notes.jpg"
    out["text_as_jpg"].write_text("this is not a picture\n")
    out["bomb"] = png_with_declared_size(d / "bomb.png", 30000, 30000)
    out["missing"] = d / "does_not_exist.jpg"
    return out


def make_awkward_images(d: Path) -> dict[str, Path]:
    """Images that are fine but need care: each must come out as 8-bit RGB."""
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    out["cmyk_jpeg"] = save(noise_image(40, 30).convert("CMYK"), d / "cmyk.jpg")
    a16 = (np.linspace(0, 65535, 40 * 30).reshape(30, 40)).astype(np.uint16)
    out["png16"] = save(Image.fromarray(a16), d / "gray16.png")
    pal = Image.new("P", (40, 30), 0)
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.paste(1, (0, 0, 20, 30))
    out["palette_transparent"] = save(pal, d / "pal.png", transparency=0)  # index 0 (red) is transparent
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    out["exif_rotated"] = save(noise_image(40, 30), d / "rotated.jpg", exif=exif)
    frames = [Image.new("RGB", (20, 10), c) for c in ("red", "green", "blue")]
    out["animated_gif"] = d / "anim.gif"
    frames[0].save(out["animated_gif"], save_all=True, append_images=frames[1:])
    out["webp"] = save(noise_image(33, 21), d / "pic.webp")
    rgba = noise_image(10, 10, seed=3).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize((10, 10)).transpose(Image.Transpose.ROTATE_90))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    out["rgba"] = save(rgba, d / "clear.png")
    return out
