"""`image_deduplicator`: drop samples whose image hash string equals an earlier sample's.

Source: data_juicer/ops/deduplicator/image_deduplicator.py (py-data-juicer 1.6.1): the hash of a
sample is the concatenation of its images' hashes; a sample without images has hash '' and is
always kept; with `consider_text` the key is (image hash, md5 of the stripped text) -- so then
image-less samples with the same text *are* deduplicated, as in data-juicer. First one wins.
"""
from __future__ import annotations

import hashlib
import re
import string
from typing import Literal

from loraflow.config import opt
from loraflow.data.image_hashes import image_hash
from loraflow.data.ops.base import Op, OpParams, Rejection, SampleImages

_NON_CHARACTER = re.compile(r"\s+|\d+|[" + re.escape(string.punctuation) + "]")


class ImageDedupParams(OpParams):
    method: Literal["phash", "dhash", "whash", "ahash"] = opt("phash", "perceptual hash to compare")
    consider_text: bool = opt(False, "also require the same text (md5) to count as a duplicate")
    lowercase: bool = opt(False, "with consider_text: lower-case the text first")
    ignore_non_character: bool = opt(False, "with consider_text: drop whitespace, digits, punctuation first")


class ImageDeduplicator(Op):
    name = "image_deduplicator"
    Params = ImageDedupParams
    kind = "dedup"

    def key(self, images: SampleImages, sample: dict) -> str | tuple[str, str]:
        image_part = "".join(image_hash(images.rgb(i), self.p.method) for i in range(len(images)))
        if not self.p.consider_text:
            return image_part
        text = self.text_of(sample)
        if self.p.lowercase:
            text = text.lower()
        if self.p.ignore_non_character:
            text = _NON_CHARACTER.sub("", text)
        return image_part, hashlib.md5(text.strip().encode("utf-8")).hexdigest()

    def duplicate_of(self, key, first_line: int) -> Rejection:
        shown = key if isinstance(key, str) else f"{key[0]}+text:{key[1][:8]}"
        return Rejection(self.name, "imagehash", shown,
                         f"duplicate of the sample on line {first_line} ({self.p.method} {shown})")
