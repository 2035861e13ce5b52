"""data-juicer's text conventions, re-implemented: byte sizes ("1MB") and word counting.

Sources: data_juicer/utils/mm_utils.py `size_to_bytes`, data_juicer/ops/common/helper_func.py
(`split_on_whitespace`, `words_refinement`, `strip`) and special_characters.py (py-data-juicer 1.6.1).
"""
from __future__ import annotations

import re
import string
import unicodedata

_UNITS = {"": 0, "b": 0, "kb": 10, "kib": 10, "mb": 20, "mib": 20, "gb": 30, "gib": 30, "tb": 40, "tib": 40,
          "pb": 50, "pib": 50, "eb": 60, "eib": 60, "zb": 70, "zib": 70, "yb": 80, "yib": 80}


def size_to_bytes(value: str | int) -> int:
    """'1MB' -> 1048576. Units are binary (KB = KiB = 1024), case-insensitive; no unit = bytes.

    data-juicer keeps only the digits of the number, so it reads '1.5MB' as 15 MB; rather than
    copy that surprise we refuse non-integers and say what to write instead.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '1MB' or '512KB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must be >= 0, got {value}")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m:
        raise ValueError(f"expected a size such as '1MB' or '512KB', got {value!r}")
    number, unit = m.group(1), m.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(f"unknown size unit {m.group(2)!r} in {value!r}; use B, KB, MB, GB, TB (or KiB, MiB, ...)")
    if "." in number:
        raise ValueError(f"{value!r}: data-juicer would read this as {number.replace('.', '')}{m.group(2)}; "
                         "write a whole number with a smaller unit (e.g. '1536KB')")
    return int(number) << _UNITS[unit]


# string.punctuation + digits + whitespace + data-juicer's OTHER_SPECIAL_CHARACTERS; emoji are
# added by unicode category (data-juicer uses the `emoji` package; single-codepoint emoji are
# almost all category 'So', which is the only kind its per-character strip can match).
_OTHER = (
    "\x92\u2009\x93\x97\u200a\x9d\x99\u202f\x96\u2005\x95\x91\x9c\u3000\u2002 \u2008\x98"
    "\x81\u2003\x82\ufffc\x83\x84\u2019\u201c\u201d\u2013\u30fc\u4e00\u25ac\u2026\u2726"
    "\ufffd\xad\xa3\u200b\u2022\u20ac\xab\xbb\xb0\xb7\u2550\xd7\u58eb\uff3e\u02d8\u21d3"
    "\u2193\u2191\u2190\u2192\uff08\uff09\xa7\u2033\u2032\xb4\xbf\u2212\xb1\u2208\ufeff"
    "\xa2\xf8\u201a\u201e\xbd\xbc\xbe\xb9\xb2\xb3\u2015\u2043\uff0c\u02cc\xb8\u2039\u203a"
    "\u02ba\u02c8\u02bb\xa6\u2010\u2800\u2030\x85\x85\u2011\u2264\u2265\u2016\u25c6\u25cf"
    "\u25a0\u25ba\u25bc\u25b2\u25b4\u2206\u25bb\xa1\u2605\u2606\u2731\u02d0\xba\u3002\xaf"
    "\u02dc\xa5\u026a\u2248\u2020\u4e0a\u30f3\uff1a\u223c\u2044\u30fb\u2661\u2713\u2295"
    "\u2024\uff0e\u22c5\xf7\uff11\u201f\uff1b\u060c\u3001\xa8\u093e\u09be\u0940\u094d"
    "\u0947\u25e6\u02da\u309c\u02bc\u2256\u02bc\xa4\u30c3\u30c4\u30b7\u2103\u221a\uff01"
    "\u3010\u3011\u203f\u221e\u27a4\uff5e\u03c0\u0647\u06e9\u261b\u20a8\u27a9\u263b\u0e51"
    "\u066a\u2665\u0131\u097d\u300a\u2018\xa9\ufd3f\u066c\uff1f\u25b7\u0413\u266b\u221f"
    "\u2122\xaa\u20aa\xae\u300c\u2014\u2756\u300d\ufd3e\u300b"
)
SPECIAL_CHARACTERS = frozenset(string.punctuation + string.digits + string.whitespace + _OTHER)


def _is_special(ch: str) -> bool:
    return ch in SPECIAL_CHARACTERS or unicodedata.category(ch) == "So"


def _strip(word: str) -> str:
    start, end = 0, len(word)
    while start < end and _is_special(word[start]):
        start += 1
    while end > start and _is_special(word[end - 1]):
        end -= 1
    return word[start:end]


def count_words(text: str) -> int:
    """data-juicer's `num_words` without a tokenizer: split on space/newline/tab, strip special
    characters from both ends of each word, count the non-empty ones."""
    words = [w for w in re.split(" |\n|\t", text) if w]
    return sum(1 for w in words if _strip(w))


# data-juicer's image / end-of-chunk placeholder tokens (data_juicer/utils/mm_utils.py SpecialTokens):
# markup in a multimodal sample's text, never caption words (the tutorial's "<__dj__image>\n二次元").
DJ_SPECIAL_TOKENS = ("<__dj__image>", "<|__dj__eoc|>")


def strip_special_tokens(text: str) -> str:
    for token in DJ_SPECIAL_TOKENS:
        text = text.replace(token, "")
    return text.strip()
