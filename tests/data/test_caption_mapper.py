"""image_captioning_mapper / image_tagging_mapper on tiny random models built in-process: captions replace
the text, the original is kept, tags land in their field, a bad image is errored with its reason, and
absent weights are a one-line error."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from data_helpers import noise_image, save, write_manifest
from loraflow.data.filter_run import filter_dataset
from loraflow.data.ops.registry import build_op
from loraflow.errors import ConfigError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "blue", "circle", "cat", "on", "sofa"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A 1-layer BLIP whose output bias makes every generated token "cat" (an answer known in advance)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    out = tmp_path_factory.mktemp("blip")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}))
    torch.manual_seed(0)
    config = BlipConfig(
        text_config=dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, bos_token_id=2, sep_token_id=3,
                         pad_token_id=0, eos_token_id=3),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                           image_size=32, patch_size=8),
        projection_dim=32)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        model.text_decoder.cls.predictions.decoder.bias[VOCAB.index("cat")] = 100.0
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_captions_replace_the_text_and_nothing_is_lost(tmp_path, tiny_blip):
    good = save(noise_image(40, 30, seed=1), tmp_path / "good.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    rows = [{"text": "<__dj__image>二次元", "images": [str(good)]},
            {"text": "old", "images": [str(broken)]},
            {"text": "no image here", "images": []}]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(write_manifest(tmp_path / "in.jsonl", rows)), "export_path": str(tmp_path / "kept.jsonl"),
        "np": 1, "process": [{"image_captioning_mapper": {"hf_img2seq": str(tiny_blip), "max_new_tokens": 3}}]}))
    result = filter_dataset(recipe, progress=False)
    assert result.total == 3 and len(result.kept) == 2 and len(result.errored) == 1
    captioned, untouched = result.kept
    assert captioned["text"] == "<__dj__image>cat cat cat" and captioned["original_text"] == "<__dj__image>二次元"
    assert untouched["text"] == "no image here" and "original_text" not in untouched
    assert "broken.png" in result.errored[0]["__loraflow__"]["error"]
    kept_file = [json.loads(line) for line in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert kept_file[0]["text"] == "<__dj__image>cat cat cat"


def test_absent_weights_are_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="hf_img2seq is required"):
        build_op("image_captioning_mapper", {}, "text", "images", "r.yaml")
    with pytest.raises(ConfigError, match="not a local model folder") as err:
        build_op("image_captioning_mapper", {"hf_img2seq": str(tmp_path / "nope")}, "text", "images", "r.yaml")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="hf_tagger is required"):
        build_op("image_tagging_mapper", {}, "text", "images", "r.yaml")


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory) -> Path:
    """A 1-layer multi-label ViT whose biases decide the tags: cat and red yes, dog no."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    out = tmp_path_factory.mktemp("tagger")
    labels = ["cat", "dog", "red"]
    config = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8, id2label=dict(enumerate(labels)), label2id={w: i for i, w in enumerate(labels)},
                       problem_type="multi_label_classification")
    torch.manual_seed(0)
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([4.0, -4.0, 1.0]))  # sigmoid: 0.982, 0.018, 0.731
    model.save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def test_tags_go_to_their_field_and_optionally_the_text(tmp_path, tiny_tagger):
    good = save(noise_image(40, 30, seed=2), tmp_path / "good.png")
    rows = [{"text": "<__dj__image>二次元", "images": [str(good)]}, {"text": "bad", "images": [str(tmp_path / "gone.png")]}]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "dataset_path": str(write_manifest(tmp_path / "in.jsonl", rows)), "export_path": str(tmp_path / "kept.jsonl"),
        "np": 1, "process": [{"image_tagging_mapper": {"hf_tagger": str(tiny_tagger), "threshold": 0.5,
                                                       "append_to_text": True}}]}))
    result = filter_dataset(recipe, progress=False)
    assert len(result.kept) == 1 and len(result.errored) == 1 and "gone.png" in result.errored[0]["__loraflow__"]["error"]
    kept = result.kept[0]
    assert kept["image_tags"] == ["cat", "red"]  # 0.982 and 0.731 reach 0.5, best first; dog (0.018) does not
    assert kept["text"] == "<__dj__image>二次元, cat, red" and kept["original_text"] == "<__dj__image>二次元"
