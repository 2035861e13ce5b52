"""data-juicer's `image_captioning_mapper` and `image_tagging_mapper`, on local weights only.

Sources for names and parameters: data_juicer/ops/mapper/image_captioning_mapper.py and
image_tagging_mapper.py (py-data-juicer 1.x). Where loraflow differs, on purpose:

* One row per input. data-juicer's captioner emits the captioned sample as a *new* row and, with
  `keep_original_sample: true`, the untouched original as another; loraflow writes the caption
  into the text field of the same row and keeps the previous text in `original_text_key`
  (`keep_original_sample: false` drops it), so every input still ends kept, rejected or errored.
* The captioner is any local transformers captioner (see `loraflow.data.captioner`); the tagger is
  a WD14-style ONNX model (data-juicer's uses RAM++). Tags go where data-juicer puts them,
  `__dj__meta__[tag_field_name]`, one list per image; `tags_to_text` also writes them as a caption.

Mappers run batched in the main process (`kind = "mapper"`): one model in memory, a whole chunk
of images per model call. A sample whose image cannot be read is errored with the reason; the
sample goes to the errored file as it came in.
"""
from __future__ import annotations

import random
import re
from typing import Any, ClassVar, Literal

from loraflow.config import opt
from loraflow.data.captioner import CaptionRequest, Captioner
from loraflow.data.captioner import check_language as check_caption_language
from loraflow.data.captioner import check_weights as check_captioner_weights
from loraflow.data.tagger import CATEGORIES, Tagger
from loraflow.data.tagger import check_weights as check_tagger_weights
from loraflow.data.ops.base import ImageError, Op, OpParams, SampleImages  # ImageError: what SampleImages raises
from loraflow.data.text_rules import DJ_SPECIAL_TOKENS
from loraflow.errors import ConfigError

META_KEY = "__dj__meta__"  # data_juicer/utils/constant.py Fields.meta
IMAGE_TOKEN, EOC_TOKEN = DJ_SPECIAL_TOKENS  # data-juicer's SpecialTokens.image / .eoc


class MapperOp(Op):
    """An op that rewrites samples. `map_batch` gets (images, sample) pairs and returns, per pair,
    a new sample dict (the input is never modified) or a one-line error string."""

    kind: ClassVar[str] = "mapper"
    stat_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params, text_key: str, image_key: str):
        super().__init__(params, text_key, image_key)
        self._model = None

    def __getstate__(self) -> dict[str, Any]:  # a worker (Ray) loads its own model
        return {**self.__dict__, "_model": None}

    @property
    def model(self):
        if self._model is None:
            self._model = self.load_model()
        return self._model

    def load_model(self):
        raise NotImplementedError

    @property
    def chunk(self) -> int:
        return self.p.batch_size or 8


def decode_all(items: list[tuple[SampleImages, dict]]) -> list[list | str]:
    """Per sample its RGB images, or the one-line error of the first image that cannot be read."""
    out: list[list | str] = []
    for images, _ in items:
        try:
            out.append([images.rgb(i) for i in range(len(images))])
        except ImageError as e:
            out.append(str(e))
    return out


def with_text(op: MapperOp, sample: dict, text: str, keep_original: bool) -> dict:
    """A copy of `sample` whose text is `text`; the text it had moves to `original_text_key` unless
    that field already holds one (a second run must not overwrite the real original)."""
    new = dict(sample)
    old = sample.get(op.text_key)
    if keep_original and old is not None and op.p.original_text_key not in sample:
        new[op.p.original_text_key] = old
    new[op.text_key] = text
    return new


def meta_of(sample: dict) -> dict:
    """data-juicer's per-sample meta dict (absent or malformed: empty, rewritten on output)."""
    meta = sample.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


class CaptioningParams(OpParams):
    hf_img2seq: str = opt("", "local transformers captioner folder (BLIP, BLIP-2, Florence-2, Qwen2-VL ...)")
    trust_remote_code: bool = opt(False, "ignored: loraflow never runs code from model folders")
    caption_num: int = opt(1, "candidates per image (> 1 samples, seeded; one is kept)", ge=1)
    keep_candidate_mode: Literal["random_any", "similar_one_simhash", "all"] = opt(
        "random_any", "which candidate to keep; loraflow supports random_any")
    keep_original_sample: bool = opt(True, "keep the previous text in `original_text_key` (loraflow: same row)")
    prompt: str | None = opt(None, "text prefix (BLIP), task token (Florence-2) or instruction (chat VLMs)")
    prompt_key: str | None = opt(None, "sample field with a per-sample prompt; wins over `prompt`")
    batch_size: int | None = opt(None, "images per model call (default 8)", ge=1)
    gpu_batch_size: int | None = opt(None, "data-juicer's name for batch_size", ge=1)
    original_text_key: str = opt("original_text", "loraflow: field that keeps the previous text")
    language: Literal["en", "zh"] = opt(
        "en", "loraflow: language of the default VLM instruction (zh needs a chat VLM; a `prompt` replaces it)")
    max_new_tokens: int = opt(128, "loraflow: longest caption, in tokens (data-juicer's fixed 128)", ge=1)
    seed: int = opt(0, "loraflow: seed of the sampling and of random_any")
    device: str = opt("auto", "loraflow: cpu, cuda or auto")


class ImageCaptioningMapper(MapperOp):
    """Captions every image of a sample. Text without data-juicer's image tokens (loraflow's usual
    one image, one caption) becomes the image captions joined by a space; text with image tokens
    keeps data-juicer's layout: each token followed by its image's caption, other text removed,
    chunks kept."""

    name = "image_captioning_mapper"
    Params = CaptioningParams

    def __init__(self, params, text_key: str, image_key: str):
        super().__init__(params, text_key, image_key)
        if params.keep_candidate_mode != "random_any":
            raise ConfigError(f"image_captioning_mapper: keep_candidate_mode '{params.keep_candidate_mode}' is not "
                              "supported yet; loraflow keeps one caption per image (random_any)")
        # before any work: a one-line error, not N errored rows
        folder = check_captioner_weights(params.hf_img2seq, "hf_img2seq")
        check_caption_language(folder, params.language, "hf_img2seq")
        self.rng = random.Random(params.seed)

    @property
    def chunk(self) -> int:
        return self.p.batch_size or self.p.gpu_batch_size or 8

    def load_model(self):
        p = self.p
        return Captioner.load(p.hf_img2seq, language=p.language, device=p.device,
                                        max_new_tokens=p.max_new_tokens, seed=p.seed)

    def prompt_of(self, sample: dict) -> str | None:
        if self.p.prompt_key and isinstance(sample.get(self.p.prompt_key), str):
            return sample[self.p.prompt_key]
        return self.p.prompt

    def map_batch(self, items):
        decoded = decode_all(items)
        requests = [CaptionRequest(im, self.prompt_of(sample))
                    for (_, sample), ims in zip(items, decoded) if not isinstance(ims, str) for im in ims]
        captions = iter(self.model.caption(requests, self.p.caption_num, self.chunk) if requests else [])
        out: list[dict | str] = []
        for (_, sample), ims in zip(items, decoded):
            if isinstance(ims, str):
                out.append(ims)
            elif not ims:
                out.append(dict(sample))  # nothing to caption (data-juicer keeps such samples as they are)
            else:
                chosen = [self.rng.choice(next(captions)) for _ in ims]
                out.append(self.place(sample, chosen))
        return out

    def place(self, sample: dict, captions: list[str]) -> dict | str:
        text = sample.get(self.text_key)
        if not isinstance(text, str) or IMAGE_TOKEN not in text:
            return with_text(self, sample, " ".join(captions), self.p.keep_original_sample)
        if text.count(IMAGE_TOKEN) != len(captions):
            return (f"field '{self.text_key}' has {text.count(IMAGE_TOKEN)} image tokens for "
                    f"{len(captions)} images in '{self.image_key}'")
        it = iter(captions)
        tokens = re.findall(re.escape(IMAGE_TOKEN) + "|" + re.escape(EOC_TOKEN), text)
        new = "".join(f"{t} {next(it)} " if t == IMAGE_TOKEN else t for t in tokens)
        return with_text(self, sample, new, self.p.keep_original_sample)


class TaggingParams(OpParams):
    tag_field_name: str = opt("image_tags", "field under __dj__meta__ that gets one tag list per image")
    tagger_model: str = opt("", "loraflow: WD14-style tagger folder (model.onnx + selected_tags.csv)")
    threshold: float = opt(0.35, "loraflow: keep general tags scoring above this", ge=0, le=1)
    character_threshold: float = opt(0.85, "loraflow: keep character tags scoring above this", ge=0, le=1)
    categories: list[Literal["general", "character"]] = opt(
        ["general", "character"], "loraflow: which tag categories to keep")
    replace_underscores: bool = opt(True, "loraflow: 'long_hair' -> 'long hair' (kaomoji such as ^_^ kept)")
    tags_to_text: Literal["none", "replace", "prepend", "append"] = opt(
        "none", "loraflow: also write the tags, comma-separated, into the text field")
    keep_original_sample: bool = opt(True, "loraflow: keep the previous text in `original_text_key`")
    original_text_key: str = opt("original_text", "loraflow: field that keeps the previous text")
    batch_size: int | None = opt(None, "images per model call (default 8; 1 for a fixed-batch model)", ge=1)
    device: str = opt("auto", "loraflow: cpu, cuda or auto (onnxruntime's CUDA provider when installed)")
    trust_remote_code: bool = opt(False, "ignored")


class ImageTaggingMapper(MapperOp):
    name = "image_tagging_mapper"
    Params = TaggingParams

    def __init__(self, params, text_key: str, image_key: str):
        super().__init__(params, text_key, image_key)
        check_tagger_weights(params.tagger_model, "tagger_model")

    def load_model(self):
        return Tagger.load(self.p.tagger_model, self.p.replace_underscores, self.p.device)

    def map_batch(self, items):
        limits = {"general": self.p.threshold, "character": self.p.character_threshold}
        thresholds = {CATEGORIES[name]: limits[name] for name in self.p.categories}
        out: list[dict | str] = [dict(sample) for _, sample in items]  # already tagged: as it came
        need = [i for i, (_, sample) in enumerate(items) if self.p.tag_field_name not in meta_of(sample)]
        todo = list(zip(need, decode_all([items[i] for i in need])))
        flat = [im for _, ims in todo if not isinstance(ims, str) for im in ims]
        rows = iter(self.model.scores(flat, self.chunk) if flat else [])
        for i, ims in todo:
            if isinstance(ims, str):
                out[i] = ims
                continue
            tags = [[name for name, _ in self.model.select(next(rows), thresholds)] for _ in ims]
            out[i] = self.tagged(items[i][1], tags)
        return out

    def tagged(self, sample: dict, tags: list[list[str]]) -> dict:
        new = dict(sample)
        new[META_KEY] = {**meta_of(sample), self.p.tag_field_name: tags}
        if self.p.tags_to_text == "none":
            return new
        joined = ", ".join(dict.fromkeys(t for per_image in tags for t in per_image))  # union, in order
        old = sample.get(self.text_key) if isinstance(sample.get(self.text_key), str) else ""
        text = {"replace": joined, "prepend": ", ".join(filter(None, (joined, old))),
                "append": ", ".join(filter(None, (old, joined)))}[self.p.tags_to_text]
        return with_text(self, new, text, self.p.keep_original_sample)
