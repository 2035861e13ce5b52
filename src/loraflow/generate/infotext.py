"""A1111 "infotext": the generation parameters stored in a PNG's `parameters` text chunk.

The format is the one AUTOMATIC1111 writes (`modules/processing.py::create_infotext`) and
A1111, Civitai and ComfyUI readers parse (`modules/infotext_utils.py`,
formerly `generation_parameters_copypaste.py`)::

    <prompt, may span lines>
    Negative prompt: <negative prompt, may span lines>
    Steps: 50, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 0, Size: 1024x1024, ...

The last line is `key: value` pairs; a value containing `,` `:` `"` or a newline is written
as a JSON string. A reader only treats the last line as parameters when it holds at least
three pairs, so write at least three.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.atomic import atomic_open
from loraflow.errors import InputError
from loraflow.generate.schedulers import SAMPLERS
from loraflow.models.prompt_syntax import extract_lora_tags

if TYPE_CHECKING:
    from PIL import Image

PNG_TEXT_KEY = "parameters"  # the chunk name A1111 reads and writes
NEGATIVE_PREFIX = "Negative prompt:"

# The keys A1111's create_infotext writes first, in its order; any other key follows in the
# caller's order (A1111's `extra_generation_params`, e.g. "Lora hashes"), then these last.
_LEADING_KEYS = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed",
    "Face restoration", "Size", "Model hash", "Model", "FP8 weight",
    "Cache FP16 weight for LoRA", "VAE hash", "VAE", "Variation seed",
    "Variation seed strength", "Seed resize from", "Denoising strength",
    "Conditional mask weight", "Clip skip", "ENSD", "Token merging ratio",
    "Token merging ratio hr", "Init image hash", "RNG", "NGMS", "Tiling",
)
_TRAILING_KEYS = ("Version", "User")

# A1111's `re_param` and `re_imagesize` (modules/infotext_utils.py).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
_KEY = re.compile(r"\w[\w \-/]+")


def _quote(value: str) -> str:
    """A1111's `quote`, plus `"` so a value that starts and ends with one survives."""
    if any(c in value for c in ',:"\n'):
        return json.dumps(value, ensure_ascii=False)
    return value


def _unquote(value: str) -> str:
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _format_value(key: str, value: Any) -> str:
    if key == "Size" and isinstance(value, (tuple, list)):
        width, height = value
        return f"{width}x{height}"
    if key == "Lora hashes" and isinstance(value, Mapping):
        # A1111's Lora extension strips `:` and `,` from names so the pairs stay parseable.
        return ", ".join(
            f"{str(name).replace(':', '').replace(',', '')}: {hash_}"
            for name, hash_ in value.items()
        )
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # `CFG scale: 4`, as A1111 shows a whole-number slider value
    return str(value)


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Build the A1111 `parameters` text for one image.

    `params` maps A1111 labels to values ("Steps": 50, "Size": "1024x1024" or (1024, 1024),
    "Lora hashes": {"name": "hash"} or the formatted string); None values are left out and
    known labels are put in A1111's order.
    """
    for key in params:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ValueError(
                f"infotext key {key!r} cannot be parsed back; use letters, digits, spaces, - or /"
            )
    ordered = [k for k in _LEADING_KEYS if k in params]
    ordered += [k for k in params if k not in _LEADING_KEYS and k not in _TRAILING_KEYS]
    ordered += [k for k in _TRAILING_KEYS if k in params]

    pairs = []
    for key in ordered:
        if params[key] is None:
            continue
        text = _format_value(key, params[key])
        pairs.append(key if text == key else f"{key}: {_quote(text)}")  # A1111: `k if k == v`

    negative_text = f"\n{NEGATIVE_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_text}\n{', '.join(pairs)}".strip()


def parse_infotext(text: str) -> dict[str, Any]:
    """Parse A1111 `parameters` text into {"prompt", "negative_prompt", label: value, ...}.

    Values stay strings, as in A1111, with JSON-quoted ones unquoted. A `WxH` value (Size,
    Hires resize) is also split into "<label>-1" and "<label>-2"; "Lora hashes" becomes a
    {name: hash} dict. Unlike A1111 no defaults are filled in for missing labels.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # A1111: fewer than 3 pairs means it is prompt text
        lines.append(last)
        last = ""

    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    for line in lines:
        line = line.strip()
        if not negative_lines and line.startswith(NEGATIVE_PREFIX):
            negative_lines.append(line[len(NEGATIVE_PREFIX):].strip())
        elif negative_lines:
            negative_lines.append(line)
        else:
            prompt_lines.append(line)

    result: dict[str, Any] = {
        "prompt": "\n".join(prompt_lines),
        "negative_prompt": "\n".join(negative_lines),
    }
    for key, value in _PARAM.findall(last):
        value = _unquote(value)
        result[key] = value
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    if isinstance(result.get("Lora hashes"), str):
        result["Lora hashes"] = _parse_lora_hashes(result["Lora hashes"])
    return result


def _parse_lora_hashes(text: str) -> dict[str, str]:
    """`"a: 0123abcd, b: 4567ef01"` -> {"a": "0123abcd", "b": "4567ef01"} (A1111 Lora extension)."""
    hashes = {}
    for item in text.split(","):
        name, sep, hash_ = item.partition(":")
        if sep:
            hashes[name.strip()] = hash_.strip()
    return hashes


def save_png_with_infotext(
    image: Image.Image,
    path: str | os.PathLike,
    infotext: str,
    extra: Mapping[str, str] | None = None,
) -> Path:
    """Write `image` as a PNG carrying `infotext` in its `parameters` chunk, atomically.

    Text that is not latin-1 (a Chinese prompt) goes into an iTXt chunk, otherwise tEXt, as
    PIL's `PngInfo.add_text` (which A1111 uses) decides. `extra` adds more text chunks.
    """
    from PIL.PngImagePlugin import PngInfo

    extra = dict(extra or {})
    if PNG_TEXT_KEY in extra:
        raise ValueError(f"extra must not contain {PNG_TEXT_KEY!r}; pass it as infotext")
    info = PngInfo()
    info.add_text(PNG_TEXT_KEY, infotext)
    for key, value in extra.items():
        info.add_text(key, value)

    with atomic_open(path, "wb") as f:
        image.save(f, format="PNG", pnginfo=info)
    return Path(path)


def read_infotext(path: str | os.PathLike) -> str | None:
    """The `parameters` text of an image file, or None when it has none."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            # PNG text after the image data is only read by `.text`; `.info` has the rest.
            text = getattr(image, "text", None) or image.info
            value = text.get(PNG_TEXT_KEY)
    except OSError as exc:  # includes missing files and UnidentifiedImageError
        raise InputError(f"cannot read image {os.fspath(path)}: {exc}") from None
    return value if isinstance(value, str) else None


def infotext_to_config(text: str) -> dict[str, Any]:
    """A1111 `parameters` text -> the GenerateConfig fields it sets (the web UI's "send to Generate",
    A1111's "Send to txt2img"): prompt (without `<lora:>` tags), negative_prompt, steps, guidance,
    seed, size, scheduler and `lora` as `name:weight`. Labels loraflow has no field for are left out."""

    parsed = parse_infotext(text)
    prompt, loras = extract_lora_tags(parsed["prompt"])
    config: dict[str, Any] = {"prompt": prompt, "negative_prompt": parsed["negative_prompt"],
                              "lora": [f"{name}:{weight:g}" for name, weight in loras]}
    for label, key, kind in (("Steps", "num_inference_steps", int), ("CFG scale", "guidance_scale", float),
                             ("Seed", "seed", int), ("Size-1", "width", int), ("Size-2", "height", int)):
        if label in parsed:
            try:
                config[key] = kind(parsed[label])
            except ValueError:
                raise InputError(f"infotext: {label} {parsed[label]!r} is not a number") from None
    wanted = (parsed.get("Sampler"), parsed.get("Schedule type"))
    for name, spec in SAMPLERS.items():  # A1111 writes a sampler as two labels; we name it once
        if (spec.infotext_sampler, spec.infotext_schedule) == wanted:
            config["scheduler"] = name
    return config
