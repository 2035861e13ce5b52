"""Text filters: caption length in characters and in words (data-juicer semantics).

Sources: data_juicer/ops/filter/{text_length,words_num}_filter.py (py-data-juicer 1.6.1).
"""
from __future__ import annotations

from loraflow.config import opt
from loraflow.data.ops.base import MAXSIZE, FilterParams, Op, Rejection, SampleImages, in_range, show_range
from loraflow.data.text_rules import count_words


class TextLengthParams(FilterParams):
    min_len: int = opt(10, "min number of characters")
    max_len: int = opt(MAXSIZE, "max number of characters")


class TextLengthFilter(Op):
    name = "text_length_filter"
    Params = TextLengthParams
    stat_keys = ("text_len",)

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        stats["text_len"] = len(self.text_of(sample))

    def decide(self, stats: dict) -> Rejection | None:
        p, n = self.p, stats["text_len"]
        if in_range(p, n, p.min_len, p.max_len):
            return None
        return Rejection(self.name, "text_len", n, f"text length {n} not in {show_range(p.min_len, p.max_len, p)}")


class WordsNumParams(FilterParams):
    lang: str = opt("en", "language of the text (only matters with tokenization)")
    tokenization: bool = opt(False, "use a sentencepiece model to split words (not available in loraflow)")
    min_num: int = opt(10, "min number of words")
    max_num: int = opt(MAXSIZE, "max number of words")


class WordsNumFilter(Op):
    name = "words_num_filter"
    Params = WordsNumParams
    stat_keys = ("num_words",)

    def compute(self, images: SampleImages, sample: dict, stats: dict) -> None:
        stats["num_words"] = count_words(self.text_of(sample))

    def decide(self, stats: dict) -> Rejection | None:
        p, n = self.p, stats["num_words"]
        if in_range(p, n, p.min_num, p.max_num):
            return None
        return Rejection(self.name, "num_words", n, f"{n} words, not in {show_range(p.min_num, p.max_num, p)}")
