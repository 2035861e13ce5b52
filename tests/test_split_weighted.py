"""`config.split_weighted`: the one `NAME[:NUMBER]` splitter of `--lora`, `lora merge`, the server's
`lora` fields (and `--reference IMG[:SCALE]`)."""
from __future__ import annotations

import pytest

from loraflow.config import split_weighted
from loraflow.errors import ConfigError


@pytest.mark.parametrize("text, expected", [
    ("style", ("style", 1.0)),                                   # no weight: the default
    ("style:", ("style", 1.0)),                                  # an empty weight: the default
    ("style:0.8", ("style", 0.8)),
    ("style:-2", ("style", -2.0)),
    ("a:0.5", ("a", 0.5)),                                       # a one-letter name is a name when a number follows
    ("loras/style.safetensors:1e-1", ("loras/style.safetensors", 0.1)),
    ("C:\\loras\\x.safetensors", ("C:\\loras\\x.safetensors", 1.0)),   # the drive's colon is part of the path
    ("C:\\loras\\x.safetensors:0.8", ("C:\\loras\\x.safetensors", 0.8)),
    ("C:/loras/x.safetensors:0.8", ("C:/loras/x.safetensors", 0.8)),
    ("C:x.safetensors", ("C:x.safetensors", 1.0)),               # drive-relative
    ("/srv/a:b/x.safetensors", ("/srv/a:b/x.safetensors", 1.0)),  # a colon inside a folder name
])
def test_split_weighted_splits_name_and_number(text, expected):
    assert split_weighted(text, 1.0) == expected


def test_split_weighted_default_is_what_the_caller_gives():
    assert split_weighted("ref.png", 0.6, what="scale") == ("ref.png", 0.6)
    assert split_weighted("ref.png", None) == ("ref.png", None)


@pytest.mark.parametrize("text, words", [
    ("style:strong", ["'style:strong'", "weight 'strong' is not a number"]),
    ("style:nan", ["'style:nan'", "not a finite number"]),
    ("style:inf", ["'style:inf'", "not a finite number"]),
    (":0.8", ["':0.8'", "no name"]),
])
def test_split_weighted_bad_weight_is_one_line_naming_the_argument(text, words):
    with pytest.raises(ConfigError) as e:
        split_weighted(text, 1.0)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)


def test_split_weighted_error_says_what_the_number_is():
    with pytest.raises(ConfigError, match=r"scale 'x' is not a number \(expected NAME\[:SCALE\]\)"):
        split_weighted("ref.png:x", 1.0, what="scale")
