"""The generated CLIP vocab makes every listed word one token, English and Chinese (the demo
model's captions depend on it: its one-layer text encoder sees tokens, not words)."""
from __future__ import annotations

from loraflow.demo.shapes import Scene, all_scenes
from loraflow.demo.train_model import demo_words
from loraflow.models.tiny_tokenizers import WORDS, build_clip_tokenizer


def _words(tokenizer, text: str) -> list[str]:
    ids = tokenizer(text).input_ids[1:-1]  # without <|startoftext|> / <|endoftext|>
    return [tokenizer.decode([i]).strip() for i in ids]


def test_every_word_is_one_token(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path)
    for word in WORDS:
        assert _words(tokenizer, word) == [word]
    assert _words(tokenizer, "a cute orange cat, full body background") == \
        ["a", "cute", "orange", "cat", ",", "full", "body", "background"]


def test_demo_captions_tokenize_into_whole_words(tmp_path):
    tokenizer = build_clip_tokenizer(tmp_path, words=demo_words())
    allowed = set(demo_words()) | {","}
    for style in ("plain", "striped"):
        for scene in all_scenes(style):
            for lang in ("en", "zh"):
                words = _words(tokenizer, scene.caption(lang))
                assert set(words) <= allowed, (scene.caption(lang), words)
    assert _words(tokenizer, Scene("pink", "star", "left", "black").caption("zh")) == \
        ["黑色", "背景", ",", "左边", "有一个", "粉色", "的", "星形"]
