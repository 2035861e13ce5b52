import zlib

import pytest
from PIL import Image

from loraflow.errors import InputError
from loraflow.generate.infotext import (
    format_infotext,
    parse_infotext,
    read_infotext,
    save_png_with_infotext,
)

PARAMS = {
    "Steps": 50,
    "Sampler": "DPM++ 2M",
    "Schedule type": "Karras",
    "CFG scale": 4,
    "Seed": 0,
    "Size": "1024x1024",
    "Model hash": "abcdef1234",
    "Model": "kolors",
    "Lora hashes": {"name1": "hash1", "name2": "hash2"},
    "Version": "loraflow 0.1.0",
}
NEGATIVE = (
    "(lowres, low quality, worst quality:1.2), (text:1.2), deformed, black and white, "
    "disfigured, low contrast, cropped, missing fingers"
)


def test_format_matches_a1111_layout():
    text = format_infotext("a girl", "ugly", PARAMS)
    assert text == (
        "a girl\n"
        "Negative prompt: ugly\n"
        "Steps: 50, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4, Seed: 0, "
        "Size: 1024x1024, Model hash: abcdef1234, Model: kolors, "
        'Lora hashes: "name1: hash1, name2: hash2", Version: loraflow 0.1.0'
    )


def test_format_orders_keys_like_a1111():
    shuffled = dict(reversed(list(PARAMS.items())))
    assert format_infotext("a", "", shuffled) == format_infotext("a", "", PARAMS)


def test_format_skips_none_and_accepts_size_tuple():
    text = format_infotext("a", "", {"Steps": 2, "Seed": 1, "Size": (768, 512), "Model": None})
    assert text == "a\nSteps: 2, Seed: 1, Size: 768x512"


def test_format_rejects_unparseable_key():
    with pytest.raises(ValueError, match="key"):
        format_infotext("a", "", {"Steps": 2, "x:y": 1})


def test_round_trip():
    parsed = parse_infotext(format_infotext("a girl, (smile:1.2)", NEGATIVE, PARAMS))
    assert parsed["prompt"] == "a girl, (smile:1.2)"
    assert parsed["negative_prompt"] == NEGATIVE
    assert parsed["Steps"] == "50"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert parsed["CFG scale"] == "4"
    assert parsed["Size"] == "1024x1024"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("1024", "1024")
    assert parsed["Lora hashes"] == {"name1": "hash1", "name2": "hash2"}
    assert parsed["Version"] == "loraflow 0.1.0"


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "a, b", "key: value", 'mixed, "quoted": \\ back', "two\nlines", '"whole"'],
)
def test_round_trip_quoting(value):
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Comment": value})
    assert parse_infotext(text)["Comment"] == value


def test_quoting_is_json_like_a1111():
    text = format_infotext("p", "", {"Steps": 1, "Seed": 2, "Model": "my, model"})
    assert text.endswith('Model: "my, model"')


def test_round_trip_chinese():
    prompt = "二次元,一个紫色短发小女孩,在家中沙发上坐着,双手托着腮,很无聊"
    negative = "（低质量：1.2），文字"
    text = format_infotext(prompt, negative, {**PARAMS, "Model": "可图, kolors"})
    parsed = parse_infotext(text)
    assert parsed["prompt"] == prompt
    assert parsed["negative_prompt"] == negative
    assert parsed["Model"] == "可图, kolors"
    assert "可图" in text  # written as text, not \u escapes


def test_round_trip_multiline():
    prompt = "first line\nsecond line, (detail:1.1)"
    negative = "blurry\nlowres"
    parsed = parse_infotext(format_infotext(prompt, negative, PARAMS))
    assert parsed["prompt"] == prompt
    assert parsed["negative_prompt"] == negative


def test_missing_negative():
    text = format_infotext("a girl", "", PARAMS)
    assert "Negative prompt" not in text
    parsed = parse_infotext(text)
    assert parsed["prompt"] == "a girl"
    assert parsed["negative_prompt"] == ""


def test_empty_prompt_with_negative():
    parsed = parse_infotext(format_infotext("", "ugly", PARAMS))
    assert (parsed["prompt"], parsed["negative_prompt"]) == ("", "ugly")


def test_parse_a1111_sample():
    # Written by hand in A1111's format (cf. the parse_generation_parameters docstring and
    # a typical v1.10 txt2img infotext with a LoRA).
    text = (
        "masterpiece, best quality, 1girl, (purple hair:1.2), short hair, <lora:inkStyle_v1:0.8>\n"
        "Negative prompt: (worst quality, low quality:1.4), (text:1.2), bad hands\n"
        "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3582364823, "
        "Size: 832x1216, Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Denoising strength: 0.4, "
        "Clip skip: 2, Hires upscale: 1.5, Hires steps: 10, Hires upscaler: R-ESRGAN 4x+ Anime6B, "
        'Lora hashes: "inkStyle_v1: 5d9b5f8e0d3a", TI hashes: "EasyNegative: c74b4e810b03", '
        "Version: v1.10.1"
    )
    parsed = parse_infotext(text)
    assert parsed["prompt"].startswith("masterpiece, best quality")
    assert parsed["prompt"].endswith("<lora:inkStyle_v1:0.8>")
    assert parsed["negative_prompt"] == "(worst quality, low quality:1.4), (text:1.2), bad hands"
    assert parsed["Steps"] == "28"
    assert parsed["Seed"] == "3582364823"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("832", "1216")
    assert parsed["Model hash"] == "31e35c80fc"
    assert parsed["Hires upscaler"] == "R-ESRGAN 4x+ Anime6B"
    assert parsed["Lora hashes"] == {"inkStyle_v1": "5d9b5f8e0d3a"}
    assert parsed["TI hashes"] == "EasyNegative: c74b4e810b03"
    assert parsed["Version"] == "v1.10.1"


def test_parse_prompt_only():
    # Fewer than three pairs on the last line: A1111 reads it as prompt text.
    parsed = parse_infotext("a cat\nsitting: on a mat")
    assert parsed == {"prompt": "a cat\nsitting: on a mat", "negative_prompt": ""}


def _png_text_chunks(path):
    """(chunk type, keyword) of every text chunk, read from the raw PNG bytes."""
    data = path.read_bytes()
    pos, chunks = 8, []
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("ascii")
        body = data[pos + 8 : pos + 8 + length]
        assert zlib.crc32(data[pos + 4 : pos + 8 + length]) == int.from_bytes(
            data[pos + 8 + length : pos + 12 + length], "big"
        )
        if kind in ("tEXt", "iTXt", "zTXt"):
            chunks.append((kind, body.split(b"\0", 1)[0].decode("latin-1")))
        pos += 12 + length
    return chunks


def test_png_round_trip_latin1(tmp_path):
    text = format_infotext("a girl", NEGATIVE, PARAMS)
    path = save_png_with_infotext(Image.new("RGB", (8, 8), "red"), tmp_path / "a.png", text)
    assert read_infotext(path) == text
    assert ("tEXt", "parameters") in _png_text_chunks(path)
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]  # no temp file left


def test_png_round_trip_chinese_uses_itxt(tmp_path):
    text = format_infotext("二次元,一个紫色短发小女孩", "低质量", PARAMS)
    path = tmp_path / "b.png"
    save_png_with_infotext(Image.new("RGB", (8, 8)), path, text, extra={"story": "第一页"})
    assert read_infotext(path) == text
    assert ("iTXt", "parameters") in _png_text_chunks(path)
    with Image.open(path) as image:
        assert image.text["story"] == "第一页"
    assert parse_infotext(read_infotext(path))["prompt"] == "二次元,一个紫色短发小女孩"


def test_png_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / "c.png"
    save_png_with_infotext(Image.new("RGB", (8, 8)), path, "old\nSteps: 1, Seed: 1, Size: 8x8")
    save_png_with_infotext(Image.new("RGB", (8, 8)), path, "new\nSteps: 1, Seed: 1, Size: 8x8")
    assert read_infotext(path).startswith("new")
    assert len(list(tmp_path.iterdir())) == 1


def test_png_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "d.png"
    with pytest.raises(OSError):
        save_png_with_infotext(Image.new("CMYK", (8, 8)), path, "x")  # PNG has no CMYK
    assert list(tmp_path.iterdir()) == []


def test_png_extra_must_not_shadow_parameters(tmp_path):
    with pytest.raises(ValueError, match="parameters"):
        save_png_with_infotext(Image.new("RGB", (8, 8)), tmp_path / "e.png", "x", {"parameters": "y"})


def test_read_infotext_absent_and_bad(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert read_infotext(plain) is None
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError, match="bad.png"):
        read_infotext(bad)
    with pytest.raises(InputError, match="missing.png"):
        read_infotext(tmp_path / "missing.png")
