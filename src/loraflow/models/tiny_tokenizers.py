"""Tokenizers for the tiny models, built offline from generated vocabularies.

* CLIP: byte-level BPE (the 256 byte symbols, with and without `</w>`) plus merges that make a
  small word list single tokens, so prompts tokenize like they would with the real CLIP vocab.
* ChatGLM (Kolors): a sentencepiece BPE model trained in-process on a small bilingual corpus,
  wrapped in diffusers' `ChatGLMTokenizer` exactly as Kolors ships it (`tokenizer.model`).
"""
from __future__ import annotations

import json
from pathlib import Path
from loraflow.models.clip_bpe import bytes_to_unicode

# Words that become single tokens (English story/scene vocabulary and A1111 negative-prompt words).
WORDS = (
    "a an the of in on at with and or to is are cat dog girl boy woman man orange red green blue yellow "
    "purple pink black white gray brown cute small big little old modern ancient style anime photo painting "
    "ink sky room house palace emperor book light ball chasing sitting standing running full body background "
    "sofa table door garden tree flower water sun moon night day happy sad curious lowres low quality worst "
    "text deformed disfigured contrast cropped missing fingers ugly noisy blurry best masterpiece detailed "
    "circle square triangle star left right top bottom center striped outlined"
).split()

CHATGLM_CORPUS = (
    "二次元,一个紫色短发小女孩,在家中沙发上坐着,双手托着腮,很无聊,全身,粉色连衣裙\n"
    "现代风格,一只橘色的小猫在温馨的客厅里,正在追逐一个红色的毛线球,地上散落着玩具\n"
    "古风,水墨画,一只橘色的小猫站在金碧辉煌的古代皇宫大殿内,四周是雕梁画栋\n"
    "丑陋,变形,嘈杂,模糊,低对比度\n"
    "a cute orange cat chasing a red ball in a cozy living room, anime style, full body\n"
    "lowres, low quality, worst quality, text, deformed, black and white, disfigured, low contrast\n"
)


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one pre-token as CLIP's tokenizer does it: merge the lowest-ranked pair."""
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, 1 << 30), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        rank, i = min(pairs)
        if rank == 1 << 30:
            break
        first, second = symbols[i], symbols[i + 1]
        merged, j = [], 0
        while j < len(symbols):
            if j + 1 < len(symbols) and symbols[j] == first and symbols[j + 1] == second:
                merged.append(first + second)
                j += 2
            else:
                merged.append(symbols[j])
                j += 1
        symbols = merged
    return symbols


def clip_vocab_and_merges(words: tuple[str, ...] = tuple(WORDS)) -> tuple[dict[str, int], list[str]]:
    """Byte-level vocab plus merges that make each of `words` one token. A word is built by joining
    the pieces BPE currently splits it into, left to right, so the merges really produce it (a merge
    learnt for one word can otherwise pre-empt another's path). CJK words get a `</w>` variant too:
    CLIP pre-tokenizes a run of CJK characters as one word, so a CJK word may end a run or not."""

    byte_symbol = bytes_to_unicode()
    symbols = list(byte_symbol.values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    seen = set(vocab_list)
    ranks: dict[tuple[str, str], int] = {}
    targets = []
    for word in dict.fromkeys(words):
        chars = [byte_symbol[b] for b in word.encode("utf-8")]
        targets.append(chars[:-1] + [chars[-1] + "</w>"])
        if not word.isascii():
            targets.append(chars)
    for target in targets:
        for _ in range(4 * len(target)):
            pieces = _bpe(list(target), ranks)
            if len(pieces) == 1:
                break
            ranks.setdefault((pieces[0], pieces[1]), len(ranks))
            if pieces[0] + pieces[1] not in seen:
                seen.add(pieces[0] + pieces[1])
                vocab_list.append(pieces[0] + pieces[1])
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    merges = [f"{a} {b}" for (a, b), _ in sorted(ranks.items(), key=lambda item: item[1])]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def build_clip_tokenizer(workdir: str | Path, max_length: int = 77, words: tuple[str, ...] = tuple(WORDS)):
    """A `CLIPTokenizer` from generated `vocab.json` + `merges.txt` (each of `words` one token) in `workdir`."""
    from transformers import CLIPTokenizer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges(words)
    (workdir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (workdir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tok = CLIPTokenizer(vocab=str(workdir / "vocab.json"), merges=str(workdir / "merges.txt"), model_max_length=max_length)
    return tok


def build_chatglm_tokenizer(workdir: str | Path, vocab_size: int = 400):
    """Kolors' `ChatGLMTokenizer` over a sentencepiece BPE model trained in-process (< 1 s)."""
    import io

    import sentencepiece as spm
    from diffusers.pipelines.kolors import ChatGLMTokenizer

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    corpus = (CHATGLM_CORPUS + " ".join(WORDS) + "\n") * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus.splitlines()),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        character_coverage=1.0,
        byte_fallback=True,  # any character (even unseen CJK) still tokenizes
        num_threads=1,
        minloglevel=2,
    )
    path = workdir / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return ChatGLMTokenizer(vocab_file=str(path))
