"""The words a model was trained on, when its folder declares them (`loraflow.json` ->
"vocabulary"), and one notice per prompt naming the prompt words outside them.

Only the demo model declares one. Its text encoders are frozen random ones, so it learnt exactly
its captions' words; any other word, even one its tokenizer has a token for, reaches the UNet as
an embedding it never saw ("a large red circle" draws a muddy circle). Real models declare
nothing and are never checked.

    vocab = Vocabulary(frozenset({"a", "red", "circle", "左边", "有一个", "圆形"}))
    vocab.unknown("a large red circle") -> ["large"]
    vocab.unknown("左边有一个大圆形")     -> ["大"]
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from loraflow.errors import ModelLoadError

log = logging.getLogger(__name__)

VOCABULARY_KEY = "vocabulary"  # in a model folder's loraflow.json: the list of words it was trained on
_CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # CJK ideographs: written without spaces between words
# a run of ideographs, or a run of other letters (digits, punctuation and weights like ":1.2" are not words)
_WORD = re.compile(rf"[{_CJK}]+|[^\W\d_{_CJK}]+")
_SYNTAX = frozenset({"BREAK", "AND"})  # A1111 prompt keywords


@dataclass
class Vocabulary:
    words: frozenset[str]  # lower-case words; Chinese ones as written
    _noticed: set[str] = field(default_factory=set, repr=False)  # prompts already reported

    def __post_init__(self):
        self._longest = max((len(w) for w in self.words), default=1)

    @classmethod
    def from_model_dir(cls, path: Path | None) -> Vocabulary | None:
        """The folder's declared vocabulary, or None (not a folder, no loraflow.json, no such key)."""
        sidecar = Path(path) / "loraflow.json" if path is not None else None
        if sidecar is None or not sidecar.is_file():
            return None
        try:
            words = json.loads(sidecar.read_text(encoding="utf-8")).get(VOCABULARY_KEY)
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{sidecar}: unreadable ({e.__class__.__name__}: {e})") from None
        if words is not None and not (isinstance(words, list) and all(isinstance(w, str) for w in words)):
            raise ModelLoadError(f"{sidecar}: {VOCABULARY_KEY} must be a list of words, got {words!r:.60}")
        return cls(frozenset(w.lower() for w in words)) if words else None

    def unknown(self, prompt: str) -> list[str]:
        """Prompt words outside the vocabulary, in order, each once. Chinese runs are split into the
        longest known words first (how the demo's tokenizer merges them); characters left over
        between known words form one unknown word."""
        found: list[str] = []
        for run in _WORD.findall(prompt):
            if run in _SYNTAX:
                continue
            if _is_cjk(run):
                found += self._unknown_in_cjk_run(run)
            elif run.lower() not in self.words:
                found.append(run.lower())
        return list(dict.fromkeys(found))

    def _unknown_in_cjk_run(self, run: str) -> list[str]:
        unknown, pending, i = [], "", 0
        while i < len(run):
            size = next((n for n in range(min(self._longest, len(run) - i), 0, -1) if run[i:i + n] in self.words), 0)
            if size:
                unknown += [pending] if pending else []
                pending, i = "", i + size
            else:
                pending, i = pending + run[i], i + 1
        return unknown + ([pending] if pending else [])

    def notice(self, prompt: str, model_name: str) -> list[str]:
        """Log one warning naming the unknown words, the first time this prompt is seen."""
        if prompt in self._noticed:
            return []
        self._noticed.add(prompt)
        unknown = self.unknown(prompt)
        if unknown:
            scripts = {_is_cjk(w) for w in unknown}  # list the known words of the same language
            known = sorted(w for w in self.words if _is_cjk(w) in scripts)
            log.warning("%s was not trained on %s, so %s no reliable effect (its words: %s)", model_name,
                        ", ".join(f'"{w}"' for w in unknown), "it has" if len(unknown) == 1 else "they have",
                        " ".join(known))
        return unknown


def _is_cjk(word: str) -> bool:
    return re.match(f"[{_CJK}]", word) is not None
