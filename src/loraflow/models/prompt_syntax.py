"""AUTOMATIC1111's prompt syntax: attention weights `(word:1.2)` and LoRA tags `<lora:name:0.8>`.

Semantics follow A1111's `modules/prompt_parser.py::parse_prompt_attention` and
`modules/extra_networks.py` so that prompts copied from A1111/Civitai weight the same words
the same way here. Differences, all in cases A1111 gets wrong or loses text:

- a lone backslash that escapes nothing (`a\\b`) stays in the text (A1111 drops it);
- a weight that is not a number (`(a:1.2.3)`) is kept as literal text (A1111 raises);
- `BREAK` markers always have weight -1 and are never merged (A1111 multiplies a BREAK
  inside brackets, giving -1.1, and merges two adjacent ones into "BREAKBREAK");
- empty text segments left by BREAK are dropped.

Full-width brackets and colons (`（word：1.2）`) are literal text, as in A1111.
"""

from __future__ import annotations

import re

from loraflow.errors import InputError

ROUND_BRACKET_MULTIPLIER = 1.1  # `(word)`
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1  # `[word]`
BREAK_WEIGHT = -1.0  # A1111 marks a BREAK chunk boundary as ("BREAK", -1)

# One token per match, tried in order (A1111's `re_attention`, with a stricter number).
_ATTENTION_TOKEN = re.compile(
    r"""
    \\[()\[\]\\]                          # escaped bracket or backslash: literal
  | \\                                    # lone backslash: literal
  | \(                                    # open round
  | \[                                    # open square
  | :\s*(?P<weight>[+-]?(?:\d+\.?\d*|\.\d+))\s*\)  # `:1.5)` closes a round bracket with a weight
  | \)                                    # close round
  | \]                                    # close square
  | [^\\()\[\]:]+                         # plain text
  | :                                     # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

# `<lora:name>`, `<lora:name:0.8>`, `<lora:name:te:unet>`, `<lyco:...>` (A1111 extra networks).
_LORA_TAG = re.compile(r"(?P<pre>[ \t]*)<(?P<kind>lora|lyco):(?P<args>[^>]*)>(?P<post>[ \t]*)")


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) segments the way A1111 does.

    `(a)` multiplies by 1.1, `[a]` divides by 1.1, `(a:1.5)` multiplies by 1.5, nesting
    multiplies, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal characters, an unclosed bracket
    applies to the rest of the prompt, an unmatched closing bracket is literal, and
    `BREAK` becomes a ("BREAK", -1.0) marker. Adjacent segments of equal weight are merged.

    >>> parse_prompt_weights("a (b:1.5) c")
    [('a ', 1.0), ('b', 1.5), (' c', 1.0)]
    """
    segments: list[list] = []  # [text, weight, is_break]; lists so weights can be scaled
    open_round: list[int] = []  # index into `segments` where each open bracket starts
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for seg in segments[start:]:
            if not seg[2]:
                seg[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(text):
        token = match.group(0)
        weight = match.group("weight")
        if token.startswith("\\"):
            segments.append([token[1:] or token, 1.0, False])
        elif token == "(":
            open_round.append(len(segments))
        elif token == "[":
            open_square.append(len(segments))
        elif weight is not None and open_round:
            scale_from(open_round.pop(), float(weight))
        elif token == ")" and open_round:
            scale_from(open_round.pop(), ROUND_BRACKET_MULTIPLIER)
        elif token == "]" and open_square:
            scale_from(open_square.pop(), SQUARE_BRACKET_MULTIPLIER)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    segments.append(["BREAK", BREAK_WEIGHT, True])
                if part:
                    segments.append([part, 1.0, False])

    # Unclosed brackets still apply to everything after them (A1111).
    for start in open_round:
        scale_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_BRACKET_MULTIPLIER)

    merged: list[list] = []
    for seg in segments:
        prev = merged[-1] if merged else None
        if prev is not None and not prev[2] and not seg[2] and prev[1] == seg[1]:
            prev[0] += seg[0]
        else:
            merged.append(seg)

    if not merged:
        return [("", 1.0)]
    return [(seg[0], seg[1]) for seg in merged]


def extract_lora_tags(text: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove `<lora:name[:weight[:unet_weight]]>` / `<lyco:...>` tags from a prompt.

    Returns the prompt without the tags and the (name, weight) pairs in prompt order. The
    weight is the first (text-encoder) weight, 1.0 when absent; a named `te=` argument
    overrides it as in A1111; other named arguments (`unet=`, `dyn=`) are ignored.

    >>> extract_lora_tags("a girl <lora:ink:0.8>")
    ('a girl', [('ink', 0.8)])
    """
    loras: list[tuple[str, float]] = []

    def take(match: re.Match) -> str:
        tag = f"<{match.group('kind')}:{match.group('args')}>"
        positional: list[str] = []
        named: dict[str, str] = {}
        for arg in match.group("args").split(":"):
            key, eq, value = arg.partition("=")
            if eq:
                named[key.strip()] = value.strip()
            else:
                positional.append(arg.strip())
        name = positional[0] if positional else ""
        if not name:
            raise InputError(f"LoRA tag {tag} has no name; expected <lora:name:weight>")
        raw_weight = named.get("te", positional[1] if len(positional) > 1 else "1.0")
        try:
            weight = float(raw_weight)
        except ValueError:
            raise InputError(
                f"LoRA tag {tag} has weight {raw_weight!r}, which is not a number; "
                "expected e.g. <lora:name:0.8>"
            ) from None
        loras.append((name, weight))
        # Keep one space between words the tag separated, none at a boundary.
        return " " if match.group("pre") and match.group("post") else ""

    cleaned = _LORA_TAG.sub(take, text)
    return cleaned.strip(), loras


def plain_prompt(prompt: str) -> str:
    """What a scorer's CLIP should read: the prompt without <lora:...> tags and (word:1.2) syntax."""
    text, _ = extract_lora_tags(prompt)
    return "".join(part for part, weight in parse_prompt_weights(text) if weight != -1).strip()
