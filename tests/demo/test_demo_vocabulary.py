"""Prompt words the demo model never learnt get one notice naming them (the model draws them as
noise); prompts of its own words, English or Chinese, get none. Real models declare no vocabulary."""
from __future__ import annotations

import json
import logging

import pytest

from loraflow.demo.shapes import STYLES, all_scenes, caption_vocabulary
from loraflow.errors import ModelLoadError
from loraflow.models.loading import demo_model_dir
from loraflow.models.vocabulary import Vocabulary

WORDS = Vocabulary(frozenset({"a", "red", "circle", "on", "the", "left", "白色", "背景", "左边", "有一个", "红色", "的", "圆形"}))


@pytest.mark.parametrize("prompt, unknown", [
    ("a large red circle", ["large"]),
    ("a red circle on the left", []),
    ("A Red CIRCLE", []),  # the tokenizer lower-cases
    ("(red:1.3) circle BREAK a circle, 2 circles", ["circles"]),  # weights, digits and BREAK are syntax
    ("a large red circle, large!", ["large"]),  # each word named once
    ("白色背景,左边有一个红色的圆形", []),
    ("白色背景,左边有一个大的红色的圆形", ["大"]),
    ("黑色背景,左边有一个红色的圆形", ["黑色"]),  # unknown characters between known words form one word
    ("左边有一个红色的圆形和蓝色的正方形", ["和蓝色", "正方形"]),
    ("a 大 red circle", ["大"]),
])
def test_unknown_words(prompt, unknown):
    assert WORDS.unknown(prompt) == unknown


def test_every_training_caption_is_inside_the_shipped_vocabulary():
    shipped = Vocabulary.from_model_dir(demo_model_dir())
    captions = [s.caption(lang) for style in STYLES for s in all_scenes(style) for lang in ("en", "zh")]
    assert len(captions) == 2 * 2 * 7 * 4 * 5 * 3
    assert [c for c in captions if shipped.unknown(c)] == []
    card = json.loads((demo_model_dir() / "loraflow.json").read_text(encoding="utf-8"))
    assert card["vocabulary"] == caption_vocabulary()  # what `demo train` writes, so a rebuild keeps it


def test_a_folder_without_a_vocabulary_is_not_checked(tmp_path):
    assert Vocabulary.from_model_dir(None) is None and Vocabulary.from_model_dir(tmp_path) is None
    (tmp_path / "loraflow.json").write_text('{"defaults": {"height": 64}}', encoding="utf-8")
    assert Vocabulary.from_model_dir(tmp_path) is None


def test_a_malformed_vocabulary_is_a_one_line_error(tmp_path):
    (tmp_path / "loraflow.json").write_text('{"vocabulary": "red circle"}', encoding="utf-8")
    with pytest.raises(ModelLoadError, match=r"loraflow.json: vocabulary must be a list of words, got 'red circle'"):
        Vocabulary.from_model_dir(tmp_path)


@pytest.fixture(scope="module")
def session():
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.session import GenerationSession

    return GenerationSession.from_options(GenerateConfig(device="cpu"))  # no model: the demo model


def _notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "loraflow.models.vocabulary"]


def test_demo_session_notices_once_per_prompt(session, caplog):
    with caplog.at_level(logging.WARNING, logger="loraflow"):
        session.encode(["a large red circle", ""])
        session.encode(["a large red circle"])  # cached: no second notice
        session.encode(["a blue square at the top, gray background", "白色背景,左边有一个红色的圆形"])
        session.encode(["白色背景,左边有一个大的红色的圆形"])
    notices = _notices(caplog)
    assert len(notices) == 2, notices
    assert '"large"' in notices[0] and "loraflow-demo" in notices[0]
    assert '"大"' in notices[1] and "红色" in notices[1]  # the Chinese words it knows, listed in Chinese
