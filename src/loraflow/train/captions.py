"""Caption augmentation that survives text-embedding caching.

A caption is a list of tags split on `caption_separator` (kohya's `shuffle_caption` convention,
`library/train_util.py::process_caption`): the first `keep_tokens` tags stay in place, the rest are
shuffled and each may be dropped (`tag_dropout`); the trigger word / `caption_prefix` is put in
front afterwards, so it is never shuffled or dropped. `caption_dropout` replaces the whole caption
with "" (the unconditional embedding, for classifier-free guidance).

With text embeddings cached, a caption cannot be re-shuffled at every step (the bug class of
sd-scripts #886 / #1583: shuffling silently stops once embeddings are cached). So, as SimpleTuner
does, each caption gets `caption_variants` augmented versions, all encoded once; the k-th time an
item is seen it uses variant `perm[k % n]`, with a fresh permutation `perm` of the n variants for
every n sightings. Every variant is therefore used once per n sightings, and the choice is a pure
function of (seed, item, sighting), so resume and multi-process runs see the same captions.
Without a text cache every sighting draws a fresh augmentation instead.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

_ATTEMPTS_PER_VARIANT = 4  # a short caption may have fewer distinct shuffles than variants asked for


@dataclass(frozen=True)
class CaptionPolicy:
    prefix: str = ""  # trigger word, put in front of every caption after shuffling
    shuffle: bool = False  # shuffle the tags after the first `keep_tokens`
    keep_tokens: int = 0  # leading tags that keep their place (and are never dropped)
    separator: str = ","  # what tags are split on
    tag_dropout: float = 0.0  # probability of dropping each non-kept tag
    caption_dropout: float = 0.0  # probability of training on the empty caption
    variants: int = 1  # augmented versions cached per caption

    @classmethod
    def from_config(cls, config) -> "CaptionPolicy":
        return cls(prefix=config.caption_prefix, shuffle=config.shuffle_caption, keep_tokens=config.keep_tokens,
                   separator=config.caption_separator, tag_dropout=config.tag_dropout,
                   caption_dropout=config.caption_dropout, variants=config.caption_variants)

    @property
    def augments(self) -> bool:
        """Does a caption change between sightings (apart from caption dropout)?"""
        return self.shuffle or self.tag_dropout > 0


def augment(caption: str, policy: CaptionPolicy, rng: random.Random) -> str:
    """One augmented version of `caption`: kept tags, then the others shuffled / dropped, prefix in front."""
    if not policy.augments:
        return policy.prefix + caption
    tags = [t.strip() for t in caption.split(policy.separator)]
    tags = [t for t in tags if t]
    kept, rest = tags[:policy.keep_tokens], tags[policy.keep_tokens:]
    if policy.shuffle:
        rng.shuffle(rest)
    if policy.tag_dropout:
        rest = [t for t in rest if rng.random() >= policy.tag_dropout]
    joiner = policy.separator if policy.separator.endswith(" ") else policy.separator + " "
    return policy.prefix + joiner.join(kept + rest)


def make_variants(caption: str, policy: CaptionPolicy, seed: int) -> list[str]:
    """Up to `policy.variants` distinct augmentations of `caption` (fewer when fewer exist). Keyed by
    the text, so items sharing a caption share its cache entries."""
    if not policy.augments:
        return [policy.prefix + caption]
    variants: list[str] = []
    for attempt in range(policy.variants * _ATTEMPTS_PER_VARIANT):
        text = augment(caption, policy, random.Random(f"{seed}:caption-variant:{caption}:{attempt}"))
        if text not in variants:
            variants.append(text)
        if len(variants) == policy.variants:
            break
    return variants


class Captions:
    """The caption of every sighting of every item; `cached` says whether the text cache is on."""

    def __init__(self, raw: list[str], policy: CaptionPolicy, seed: int, plan, cached: bool):
        self.raw, self.policy, self.seed, self.plan, self.cached = raw, policy, seed, plan, cached
        # items never trained on (held out, unused reg images: 0 repeats) need no variants
        self.variants = [make_variants(c, policy, seed) if cached and r > 0 else [] for c, r in zip(raw, plan.repeats)]
        self._sightings: tuple[int, list[list[int]]] | None = None  # (epoch, [batch][position] -> sighting)

    def all_cached(self) -> set[str]:
        """Every text the cache must hold: all variants, and "" for caption dropout and padding."""
        return {v for vs in self.variants for v in vs} | {""}

    def plain(self, item: int) -> str:
        """The caption without augmentation (held-out evaluation, metadata)."""
        return self.policy.prefix + self.raw[item]

    def for_batch(self, m: int) -> list[str]:
        """Captions of micro-batch m, caption dropout applied."""
        entries = self.plan.batch(m)
        # drawn first and in entry order, as before augmentation existed: runs without it stay unchanged
        dropout_rng = random.Random(f"{self.seed}:{m}:caption")
        dropped = [dropout_rng.random() < self.policy.caption_dropout for _ in entries]
        out = []
        for pos, (entry, drop) in enumerate(zip(entries, dropped)):
            if drop:
                out.append("")
            elif not self.policy.augments:
                out.append(self.plain(entry.item))
            elif self.cached:
                out.append(self._variant(entry.item, self._sighting(m, pos)))
            else:
                out.append(augment(self.raw[entry.item], self.policy, random.Random(f"{self.seed}:{m}:{pos}:augment")))
        return out

    def _variant(self, item: int, sighting: int) -> str:
        variants = self.variants[item]
        n = len(variants)
        perm = list(range(n))
        random.Random(f"{self.seed}:variant-order:{item}:{sighting // n}").shuffle(perm)
        return variants[perm[sighting % n]]

    def _sighting(self, m: int, pos: int) -> int:
        """How many times the item at (micro-batch m, position) was seen before in the whole run."""
        per_epoch = self.plan.batches_per_epoch
        epoch, index = divmod(m, per_epoch)
        if self._sightings is None or self._sightings[0] != epoch:
            seen: dict[int, int] = {}
            table = []
            for batch in self.plan.epoch(epoch):
                row = []
                for entry in batch:
                    row.append(seen.get(entry.item, 0))
                    seen[entry.item] = row[-1] + 1
                table.append(row)
            self._sightings = (epoch, table)
        item = self.plan.batch(m)[pos].item
        return epoch * self.plan.repeats[item] + self._sightings[1][index][pos]
