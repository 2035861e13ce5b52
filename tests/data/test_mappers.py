"""image_captioning_mapper and image_tagging_mapper on tiny models built here: captions stored and
originals kept, tags thresholded exactly, failed images errored with the reason, missing weights a
one-line error. Expected values come from the model run directly (captions) or numpy (tags)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from data_helpers import noise_image, save, write_manifest
from loraflow.data.filter_run import filter_dataset
from loraflow.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "recipes" / "auto-captions.yaml"
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "cat", "dog", "on", "the", "red", "blue",
         "sofa", "picture", "of", "girl", "tree", "house", "sky"]


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    """A random 1-layer BLIP captioner + processor (BERT tokenizer on a 20-word vocab), saved as a
    transformers folder so the op loads it through the generic Auto classes."""
    import torch
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    d = tmp_path_factory.mktemp("blip")
    (d / "vocab.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    tok = BertTokenizer(str(d / "vocab.txt"), bos_token="[DEC]")
    text = dict(vocab_size=len(WORDS), hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=40, bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3)
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, image_size=16,
                  patch_size=8)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    out = d / "model"
    model.save_pretrained(out)
    BlipProcessor(image_processor=BlipImageProcessor(size={"height": 16, "width": 16}), tokenizer=tok).save_pretrained(out)
    return out


def reference_captions(folder: Path, paths: list[Path], prompt: str | None = None, max_new_tokens: int = 8) -> list[str]:
    """Each image captioned alone, greedy, straight through transformers (no loraflow code)."""
    import torch
    from transformers import BlipForConditionalGeneration, BlipProcessor

    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    proc = BlipProcessor.from_pretrained(folder)
    out = []
    for p in paths:
        inputs = proc(images=[Image.open(p).convert("RGB")], text=[prompt] if prompt else None, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(proc.batch_decode(ids, skip_special_tokens=True)[0].strip())
    return out


def write_recipe(tmp_path: Path, rows: list, process: list) -> Path:
    write_manifest(tmp_path / "in.jsonl", rows)
    recipe = {"dataset_path": str(tmp_path / "in.jsonl"), "export_path": str(tmp_path / "out" / "kept.jsonl"),
              "np": 1, "image_key": "image", "process": process}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path


def read(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def test_captions_are_stored_batched_and_the_original_kept(tmp_path, tiny_blip):
    paths = [save(noise_image(20 + 4 * i, 24, seed=i), tmp_path / f"{i}.png") for i in range(5)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    rows = [{"text": "二次元", "image": [str(p)], "id": i} for i, p in enumerate(paths)]
    rows.insert(2, {"text": "二次元", "image": [str(broken)], "id": "bad"})
    rows.append({"text": "no image here", "image": [], "id": "none"})
    recipe = write_recipe(tmp_path, rows, [{"image_captioning_mapper": {
        "hf_img2seq": str(tiny_blip), "max_new_tokens": 8, "batch_size": 2, "device": "cpu"}}])

    result = filter_dataset(recipe, progress=False)

    expected = reference_captions(tiny_blip, paths)
    assert result.total == len(rows) and len(result.errored) == 1 and not result.rejected
    kept = {row["id"]: row for row in read(tmp_path / "out" / "kept.jsonl")}
    for i, caption in enumerate(expected):
        assert caption and kept[i]["text"] == caption  # batches of 2 give what one image alone gives
        assert kept[i]["original_text"] == "二次元"
    assert kept["none"]["text"] == "no image here" and "original_text" not in kept["none"]
    (bad,) = read(tmp_path / "out" / "kept_errored.jsonl")
    assert bad["id"] == "bad" and bad["text"] == "二次元" and "broken.png" in bad["__loraflow__"]["error"]


def test_prompt_prefix_image_tokens_and_no_original(tmp_path, tiny_blip):
    paths = [save(noise_image(16, 16, seed=10 + i), tmp_path / f"{i}.png") for i in range(2)]
    rows = [{"text": "<__dj__image> old words <|__dj__eoc|><__dj__image> more <|__dj__eoc|>",
             "image": [str(p) for p in paths]}]
    recipe = write_recipe(tmp_path, rows, [{"image_captioning_mapper": {
        "hf_img2seq": str(tiny_blip), "max_new_tokens": 8, "prompt": "a picture of", "keep_original_sample": False}}])

    filter_dataset(recipe, progress=False)

    first, second = reference_captions(tiny_blip, paths, prompt="a picture of")
    assert first.startswith("a picture of")  # BLIP continues the prefix
    (row,) = read(tmp_path / "out" / "kept.jsonl")
    # data-juicer's layout: each image token followed by its caption, other text removed, chunks kept
    assert row["text"] == f"<__dj__image> {first} <|__dj__eoc|><__dj__image> {second} <|__dj__eoc|>"
    assert "original_text" not in row


@pytest.fixture(scope="module")
def tiny_chat_vlm(tmp_path_factory) -> Path:
    """A random 1-layer LLaVA (tiny CLIP vision + Llama) with a chat template: the chat-VLM path that
    Qwen2-VL takes too (Qwen2-VL's own processor needs torchvision for its video half, not installed)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    words = ["<unk>", "<pad>", "<s>", "</s>", "<image>", "USER:", "ASSISTANT:", "一只", "猫", "在", "沙发", "上"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                                  eos_token="</s>")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }}{% endif %}{% endfor %} {% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 16},
                                                                  crop_size={"height": 16, "width": 16}),
                               tokenizer=tok, chat_template=template, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        text_config=dict(model_type="llama", vocab_size=len(words), hidden_size=32, intermediate_size=37,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=128, bos_token_id=2, eos_token_id=3, pad_token_id=1),
        vision_config=dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=2, image_size=16, patch_size=8, projection_dim=16),
        image_token_id=4, vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("llava") / "model"
    LlavaForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_chat_vlm_answers_the_chinese_instruction(tmp_path, tiny_chat_vlm):
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from loraflow.data.captioner import CHAT_PROMPTS

    paths = [save(noise_image(24, 20 + 4 * i, seed=20 + i), tmp_path / f"{i}.png") for i in range(3)]
    rows = [{"text": "二次元", "image": [str(p)]} for p in paths]
    recipe = write_recipe(tmp_path, rows, [{"image_captioning_mapper": {
        "hf_img2seq": str(tiny_chat_vlm), "language": "zh", "max_new_tokens": 5, "batch_size": 2}}])

    filter_dataset(recipe, progress=False)

    # reference: one image at a time, the Chinese instruction in a user turn, only the answer decoded
    assert any("\u4e00" <= ch <= "\u9fff" for ch in CHAT_PROMPTS["zh"]) and CHAT_PROMPTS["zh"] != CHAT_PROMPTS["en"]
    model = LlavaForConditionalGeneration.from_pretrained(tiny_chat_vlm).eval()
    proc = AutoProcessor.from_pretrained(tiny_chat_vlm)
    turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": CHAT_PROMPTS["zh"]}]}]
    prompt = proc.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
    expected = []
    for p in paths:
        inputs = proc(images=[Image.open(p).convert("RGB")], text=[prompt], return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        expected.append(proc.batch_decode(ids[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0].strip())
    kept = read(tmp_path / "out" / "kept.jsonl")
    assert [row["text"] for row in kept] == expected and all(expected)
    assert all(row["original_text"] == "二次元" for row in kept)


# --- the WD14-style tagger ------------------------------------------------------------------------

TAGS = [("long_hair", 0), ("smile", 0), ("^_^", 0), ("hatsune_miku", 4), ("solo", 0), ("general", 9)]
W = np.array([[0.012, -0.010, 0.004, 0.015, -0.002, 0.01],  # rows: B, G, R channel means (0..255)
              [-0.006, 0.011, 0.000, -0.004, 0.003, 0.01],
              [0.010, -0.004, 0.008, 0.012, -0.001, 0.01]], np.float32)
B = np.array([-1.0, 0.2, -1.5, -2.0, 0.9, 3.0], np.float32)


@pytest.fixture(scope="module")
def tiny_tagger(tmp_path_factory) -> Path:
    """model.onnx: (N, 8, 8, 3) -> sigmoid(mean over H, W @ W + B), and its selected_tags.csv."""
    from onnx import TensorProto, helper, numpy_helper, save_model

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1, 2], keepdims=0),
         helper.make_node("MatMul", ["mean", "W"], ["logits0"]),
         helper.make_node("Add", ["logits0", "B"], ["logits"]),
         helper.make_node("Sigmoid", ["logits"], ["output"])],
        "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", len(TAGS)])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    d = tmp_path_factory.mktemp("tagger")
    save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(d / "model.onnx"))
    with open(d / "selected_tags.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows([i, name, cat, 100] for i, (name, cat) in enumerate(TAGS))
    return d


def expected_tags(bgr_means: np.ndarray, general: float, character: float) -> list[str]:
    """WD14 semantics by hand: sigmoid scores, strict thresholds per category, best first, underscores
    to spaces except in kaomoji, the rating category never."""
    scores = 1 / (1 + np.exp(-(bgr_means @ W + B)))
    limits = {0: general, 4: character}
    picked = [(s, name) for s, (name, cat) in zip(scores, TAGS) if cat in limits and s > limits[cat]]
    return [name if name == "^_^" else name.replace("_", " ") for _, name in sorted(picked, reverse=True)]


def test_tags_are_thresholded_exactly_and_written(tmp_path, tiny_tagger):
    red = save(Image.new("RGB", (8, 8), (200, 30, 40)), tmp_path / "red.png")
    blue = save(Image.new("RGB", (8, 8), (10, 60, 250)), tmp_path / "blue.png")
    wide = save(Image.new("RGB", (8, 4), (200, 30, 40)), tmp_path / "wide.png")  # padded to 8x8 on white
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    rows = [{"text": "二次元", "image": [str(red), str(blue)]}, {"text": "二次元", "image": [str(wide)]},
            {"text": "二次元", "image": [str(broken)]},
            {"text": "done", "image": [str(red)], "__dj__meta__": {"image_tags": [["kept as is"]]}}]
    recipe = write_recipe(tmp_path, rows, [{"image_tagging_mapper": {
        "tagger_model": str(tiny_tagger), "threshold": 0.5, "character_threshold": 0.6, "tags_to_text": "append"}}])

    result = filter_dataset(recipe, progress=False)

    red_tags = expected_tags(np.array([40, 30, 200.0]), 0.5, 0.6)
    blue_tags = expected_tags(np.array([250, 60, 10.0]), 0.5, 0.6)
    wide_tags = expected_tags((np.array([40, 30, 200.0]) + 255) / 2, 0.5, 0.6)  # half the square is white
    assert red_tags != blue_tags and 0 < len(red_tags) < len(TAGS) - 1  # the thresholds really cut
    kept = read(tmp_path / "out" / "kept.jsonl")
    assert result.total == 4 and len(kept) == 3 and len(result.errored) == 1
    assert kept[0]["__dj__meta__"]["image_tags"] == [red_tags, blue_tags]
    union = list(dict.fromkeys(red_tags + blue_tags))
    assert kept[0]["text"] == "二次元, " + ", ".join(union) and kept[0]["original_text"] == "二次元"
    assert kept[1]["__dj__meta__"]["image_tags"] == [wide_tags]
    assert kept[2]["__dj__meta__"]["image_tags"] == [["kept as is"]] and kept[2]["text"] == "done"  # data-juicer skips tagged
    (bad,) = read(tmp_path / "out" / "kept_errored.jsonl")
    assert "broken.png" in bad["__loraflow__"]["error"] and bad["text"] == "二次元"


@pytest.mark.parametrize("op, params, words", [
    ("image_captioning_mapper", {"hf_img2seq": "{tmp}/no-such-model"}, ["no-such-model", "does not exist", "huggingface-cli download"]),
    ("image_tagging_mapper", {"tagger_model": "{tmp}"}, ["has no model.onnx", "SmilingWolf/wd-swinv2-tagger-v3"]),
    ("image_captioning_mapper", {}, ["hf_img2seq is required"]),
    ("image_captioning_mapper", {"hf_img2seq": "{blip}", "language": "zh"}, ["language 'zh' needs a chat VLM", "'blip'"]),
    ("image_captioning_mapper", {"hf_img2seq": "{blip}", "keep_candidate_mode": "all"}, ["'all' is not supported yet"]),
])
def test_bad_captioner_or_tagger_setup_is_one_line_before_any_work(tmp_path, tiny_blip, op, params, words):
    params = {k: v.format(tmp=tmp_path, blip=tiny_blip) for k, v in params.items()}
    recipe = write_recipe(tmp_path, [{"text": "x", "image": []}], [{op: params}])
    with pytest.raises(ConfigError) as err:
        filter_dataset(recipe, progress=False)
    message = str(err.value)
    assert "\n" not in message and "process[0]" in message
    for word in words:
        assert word in message
    assert not (tmp_path / "out").exists()  # nothing was written


def test_example_recipe_runs_on_tiny_models(tmp_path, tiny_blip, tiny_tagger, monkeypatch):
    """examples/recipes/auto-captions.yaml with its model paths pointed at the tiny models (and the
    captioner asked for English, which BLIP can write)."""
    monkeypatch.chdir(tmp_path)
    recipe = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    steps = {name: params for step in recipe["process"] for name, params in step.items()}
    steps["image_captioning_mapper"].update(hf_img2seq=str(tiny_blip), language="en", max_new_tokens=6)
    steps["image_tagging_mapper"]["tagger_model"] = str(tiny_tagger)
    image = save(noise_image(1024, 1024, seed=3), tmp_path / "big.png")
    write_manifest(tmp_path / recipe["dataset_path"], [{"text": "二次元", recipe["image_key"]: [str(image)]}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")

    result = filter_dataset(path, progress=False)

    (row,) = result.kept
    assert row["original_text"] == "二次元" and row["text"].startswith(reference_captions(tiny_blip, [image], max_new_tokens=6)[0])
    assert "image_tags" in row["__dj__meta__"]


def test_mapped_samples_come_back_from_worker_processes(tmp_path, tiny_tagger, monkeypatch):
    """On Ray the op runs in another process, so the rewritten sample must travel back in the verdict
    (an in-place edit would be lost). Emulated cheaply: every chunk crosses a pickle boundary."""
    import pickle

    from loraflow.data import filter_run

    def across_processes(evaluate, task, items, np, desc, progress):
        return pickle.loads(pickle.dumps(evaluate(pickle.loads(pickle.dumps(task)), pickle.loads(pickle.dumps(items)))))

    paths = [save(Image.new("RGB", (8, 8), (30 * i, 200 - 20 * i, 90)), tmp_path / f"{i}.png") for i in range(4)]
    rows = [{"text": f"picture {i}", "image": [str(p)]} for i, p in enumerate(paths)] + [{"text": "x", "image": 5}]
    recipe = write_recipe(tmp_path, rows, [{"image_tagging_mapper": {
        "tagger_model": str(tiny_tagger), "threshold": 0.5, "tags_to_text": "replace"}}])
    local = filter_dataset(recipe, progress=False)
    monkeypatch.setitem(filter_run.MAPPERS, "local", across_processes)
    remote = filter_dataset(recipe, progress=False)
    assert remote.kept == local.kept and remote.errored == local.errored and len(local.errored) == 1
    assert all(row["original_text"].startswith("picture") and row["__dj__meta__"]["image_tags"] for row in remote.kept)
    assert "'image' must be a list of image paths" in remote.errored[0]["__loraflow__"]["error"]


def test_a_sample_whose_images_cannot_be_listed_is_errored_and_the_batch_keeps_its_order(tmp_path, tiny_tagger):
    """filter_run._batched: the sample whose `image` is a number, not paths, is errored before the batched
    model call; the others are tagged, each with its own image's tags, in input order."""
    red = save(Image.new("RGB", (8, 8), (200, 30, 40)), tmp_path / "red.png")
    blue = save(Image.new("RGB", (8, 8), (10, 60, 250)), tmp_path / "blue.png")
    rows = [{"text": "a", "image": [str(red)]}, {"text": "b", "image": 7}, {"text": "c", "image": [str(blue)]}]
    recipe = write_recipe(tmp_path, rows, [{"image_tagging_mapper": {
        "tagger_model": str(tiny_tagger), "threshold": 0.5, "character_threshold": 0.6}}])

    result = filter_dataset(recipe, progress=False)

    kept = read(tmp_path / "out" / "kept.jsonl")
    assert result.total == 3 and [row["text"] for row in kept] == ["a", "c"]  # tags_to_text off: text as is
    assert [row["__dj__meta__"]["image_tags"] for row in kept] == [
        [expected_tags(np.array([40, 30, 200.0]), 0.5, 0.6)], [expected_tags(np.array([250, 60, 10.0]), 0.5, 0.6)]]
    (bad,) = read(tmp_path / "out" / "kept_errored.jsonl")
    assert bad["text"] == "b" and "must be a list of image paths" in bad["__loraflow__"]["error"]
