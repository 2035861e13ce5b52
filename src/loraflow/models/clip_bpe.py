"""CLIP's BPE tokenizer from the merges file shipped in `configs/clip/` (open_clip, MIT): the
tokenizer of SD1.5's and SDXL's text encoders, built offline."""
from __future__ import annotations

import functools
import gzip
from pathlib import Path

CLIP_BPE = Path(__file__).parent / "configs" / "clip" / "bpe_simple_vocab_16e6.txt.gz"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable unicode table (openai/CLIP `clip/simple_tokenizer.py`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The 49408-token CLIP BPE vocabulary, built like openai/CLIP's `SimpleTokenizer`: the 256 byte
    symbols, the same with `</w>`, one token per merge (first 48894 merges), then the two specials."""
    lines = gzip.decompress(CLIP_BPE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]  # line 0 is "#version"
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def clip_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """A real CLIP tokenizer (SD1.5's; SDXL's `tokenizer_2` is the same with `pad_token="!"`)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=model_max_length)
