import pytest

from loraflow.errors import InputError
from loraflow.models.prompt_syntax import extract_lora_tags, parse_prompt_weights

UP = 1.1
DOWN = 1 / 1.1


def weights(text):
    """Parse and round weights so float noise from repeated multiplication does not matter."""
    return [(t, round(w, 6)) for t, w in parse_prompt_weights(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a girl", [("a girl", 1.0)]),
        ("", [("", 1.0)]),
        ("(a)", [("a", UP)]),
        ("((a))", [("a", UP * UP)]),
        ("[a]", [("a", DOWN)]),
        ("[[a]]", [("a", DOWN * DOWN)]),
        ("(a:1.5)", [("a", 1.5)]),
        ("(a: 1.5 )", [("a", 1.5)]),
        ("(a:1.5) b", [("a", 1.5), (" b", 1.0)]),
        ("((a:1.5))", [("a", 1.5 * UP)]),
        ("(a [b])", [("a ", UP), ("b", 1.0)]),
        ("(a:-1)", [("a", -1.0)]),
        ("(a:.5)", [("a", 0.5)]),
        # escapes are literal
        (r"\(a\)", [("(a)", 1.0)]),
        (r"\[a\]", [("[a]", 1.0)]),
        (r"a\\b", [("a\\b", 1.0)]),
        (r"(\(a\))", [("(a)", UP)]),
        # unbalanced: an unclosed bracket applies to the rest; a stray closer is literal
        ("(a", [("a", UP)]),
        ("x (a", [("x ", 1.0), ("a", UP)]),
        ("[a", [("a", DOWN)]),
        ("a)", [("a)", 1.0)]),
        ("a]", [("a]", 1.0)]),
        ("(a:1.5", [("a:1.5", UP)]),
        # a colon that is not a weight is text
        ("a:b", [("a:b", 1.0)]),
        ("(a:1.2.3)", [("a:1.2.3", UP)]),
        # adjacent segments of equal weight merge
        ("(a)(b)", [("ab", UP)]),
        ("(a) (b)", [("a", UP), (" ", 1.0), ("b", UP)]),
        ("(a:1.2), (b:1.2)", [("a", 1.2), (", ", 1.0), ("b", 1.2)]),
    ],
)
def test_attention(text, expected):
    assert weights(text) == [(t, round(w, 6)) for t, w in expected]


def test_a1111_docstring_example():
    # From A1111 modules/prompt_parser.py::parse_prompt_attention doctest.
    assert weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).") == [
        ("a ", 1.0),
        ("house", 1.573),
        (" ", 1.1),
        ("on", 1.0),
        (" a ", 1.1),
        ("hill", 0.55),
        (", sun, ", 1.1),
        ("sky", 1.4641),
        (".", 1.1),
    ]


def test_nesting_is_exact_product():
    assert parse_prompt_weights("((a))") == [("a", 1.1 * 1.1)]


def test_break():
    assert weights("a BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
    assert weights("(a BREAK b)") == [("a", UP), ("BREAK", -1.0), ("b", UP)]
    assert weights("BREAK") == [("BREAK", -1.0)]
    assert weights("a BREAK BREAK b") == [("a", 1.0), ("BREAK", -1.0), ("BREAK", -1.0), ("b", 1.0)]
    # only the whole word
    assert weights("BREAKING news") == [("BREAKING news", 1.0)]


def test_seed_negative_prompt():
    negative = (
        "(lowres, low quality, worst quality:1.2), (text:1.2), deformed, black and white, "
        "disfigured, low contrast, cropped, missing fingers"
    )
    assert parse_prompt_weights(negative) == [
        ("lowres, low quality, worst quality", 1.2),
        (", ", 1.0),
        ("text", 1.2),
        (", deformed, black and white, disfigured, low contrast, cropped, missing fingers", 1.0),
    ]


def test_chinese_text():
    prompt = "二次元,一个紫色短发小女孩,穿着(粉色的连衣裙:1.3),在家中的[沙发]上"
    assert weights(prompt) == [
        ("二次元,一个紫色短发小女孩,穿着", 1.0),
        ("粉色的连衣裙", 1.3),
        (",在家中的", 1.0),
        ("沙发", round(DOWN, 6)),
        ("上", 1.0),
    ]


def test_full_width_punctuation_is_literal():
    # A1111 only knows ASCII brackets; full-width ones stay text.
    prompt = "（杰作：1.2），二次元，（小女孩）"
    assert parse_prompt_weights(prompt) == [(prompt, 1.0)]
    assert parse_prompt_weights("（小女孩）(紫色短发)") == [("（小女孩）", 1.0), ("紫色短发", 1.1)]


def test_lora_tags():
    assert extract_lora_tags("a girl") == ("a girl", [])
    assert extract_lora_tags("a girl, <lora:ink:0.8>") == ("a girl,", [("ink", 0.8)])
    assert extract_lora_tags("<lora:ink> a girl") == ("a girl", [("ink", 1.0)])
    assert extract_lora_tags("a <lora:ink:0.5> girl <lyco:style:-0.3>") == (
        "a girl",
        [("ink", 0.5), ("style", -0.3)],
    )


def test_lora_tag_two_weights_keeps_first():
    assert extract_lora_tags("x <lora:ink:0.7:0.2>") == ("x", [("ink", 0.7)])
    assert extract_lora_tags("x <lora:ink:te=0.4:unet=1>") == ("x", [("ink", 0.4)])


def test_lora_tag_chinese_prompt_and_name():
    assert extract_lora_tags("二次元,<lora:紫发女孩:0.9>一个紫色短发小女孩") == (
        "二次元,一个紫色短发小女孩",
        [("紫发女孩", 0.9)],
    )


def test_lora_tag_bad_weight():
    with pytest.raises(InputError, match=r"<lora:ink:strong>") as info:
        extract_lora_tags("a <lora:ink:strong>")
    assert "\n" not in str(info.value)


def test_lora_tag_without_name():
    with pytest.raises(InputError, match="no name"):
        extract_lora_tags("<lora::0.5>")


def test_lora_tags_then_weights():
    prompt, loras = extract_lora_tags("(a girl:1.2) <lora:ink:0.8>")
    assert loras == [("ink", 0.8)]
    assert parse_prompt_weights(prompt) == [("a girl", 1.2)]
