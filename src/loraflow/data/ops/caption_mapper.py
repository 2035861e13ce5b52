"""Auto-captions under data-juicer's op names, on local transformers models (never downloaded).

* `image_captioning_mapper` (data_juicer/ops/mapper/image_captioning_mapper.py, py-data-juicer
  1.6.1: same name and the parameters a recipe gives: `hf_img2seq`, `prompt`, `prompt_key`,
  `caption_num`, ...): any model `AutoModelForImageTextToText` loads from a folder (BLIP, BLIP-2, ...).
* `image_tagging_mapper`: data-juicer runs the RAM tagger; loraflow takes any multi-label
  `AutoModelForImageClassification` folder (`hf_tagger`; WD14-style taggers converted to
  transformers, e.g. the `*-tagger-v3-hf` ones): tags whose sigmoid score reaches `threshold`, best
  first, into `tag_field_name`, and optionally appended to the text as comma-separated tags.

Where data-juicer's mapper adds generated samples beside the original ones
(`keep_original_sample`), loraflow replaces the sample's text with the caption and keeps the
original text in `original_text_key`, so the sample count (and every verdict) stays one per input.
The first image of a sample is captioned; a sample without images is kept unchanged. An unreadable
image makes its sample errored with the reason, as with every op.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from loraflow.config import opt
from loraflow.data.ops.base import OpParams, SampleError
from loraflow.data.ops.model_filters import DJ_SPECIAL_TOKENS, ModelOp, _decode_all
from loraflow.errors import ConfigError


class CaptioningParams(OpParams):
    hf_img2seq: str = opt("", "local image-to-text model folder (transformers: BLIP, BLIP-2, ...)")
    trust_remote_code: bool = opt(False, "ignored: loraflow never runs code from model folders")
    caption_num: int = opt(1, "captions per image: only 1 (loraflow replaces the text instead of adding samples)")
    keep_candidate_mode: str = opt("random_any", "ignored (one caption per image)")
    keep_original_sample: bool = opt(True, "loraflow: the original text is always kept, in original_text_key")
    prompt: str | None = opt(None, "text prompt for conditional captioning (e.g. 'a picture of')")
    prompt_key: str | None = opt(None, "sample field holding a per-sample prompt (wins over prompt)")
    original_text_key: str = opt("original_text", "loraflow: field the original text is moved to")
    max_new_tokens: int = opt(40, "loraflow: longest caption in tokens", ge=1)
    device: str = opt("auto", "loraflow: cpu, cuda or auto")


class LocalModelMapper(ModelOp):
    """A mapper over a local transformers folder (`model_key` names the parameter holding it)."""

    maps: ClassVar[bool] = True  # changes samples instead of judging them (see filter_run._evaluate_model)
    model_key: ClassVar[str]

    def __init__(self, params, text_key: str, image_key: str):
        super().__init__(params, text_key, image_key)
        folder = getattr(params, self.model_key)
        if not Path(folder).is_dir():
            raise ConfigError(f"{self.name}: {self.model_key}={folder!r} is not a local model folder "
                              "(loraflow never downloads during a run; download it first)")
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:  # workers load their own model
        return {**self.__dict__, "_scorer": None, "_model": None}

    def _load(self, processor_cls, model_cls):
        """(processor, model in eval mode, device), loaded once."""
        if self._model is None:
            import torch

            folder = getattr(self.p, self.model_key)
            device = self.p.device if self.p.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                processor = processor_cls.from_pretrained(folder, local_files_only=True)
                model = model_cls.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"{self.name}: cannot load {folder}: {first}") from None
            self._model = (processor, model.to(device).eval(), device)
        return self._model

    def _first_images(self, items, errors: list[str | None]):
        """Decode each sample's first image where `errors[i]` is None (updated in place: "" = no image)."""
        for i, (images, _, _) in enumerate(items):
            if errors[i] is None and not len(images):
                errors[i] = ""
        todo = [i for i, e in enumerate(errors) if e is None]
        flat, decode_errors = _decode_all([(_FirstImage(items[i][0]), items[i][1], items[i][2]) for i in todo])
        for i, error in zip(todo, decode_errors):
            errors[i] = error
        return [i for i, error in zip(todo, decode_errors) if error is None], flat

    def _set_text(self, sample: dict, text: str) -> None:
        """New text; the original moves to `original_text_key`, data-juicer's image token stays in front."""
        original = sample.get(self.text_key, "")
        sample[self.p.original_text_key] = original
        token = DJ_SPECIAL_TOKENS[0]
        if isinstance(original, str) and original.startswith(token) and not text.startswith(token):
            text = token + text
        sample[self.text_key] = text

    def decide(self, stats):
        return None


class ImageCaptioningMapper(LocalModelMapper):
    name = "image_captioning_mapper"
    Params = CaptioningParams
    model_key = "hf_img2seq"

    def __init__(self, params, text_key: str, image_key: str):
        if params.caption_num != 1:
            raise ConfigError(f"{self.name}: caption_num={params.caption_num}: only 1 is supported (loraflow "
                              "replaces the caption and keeps the original in original_text_key)")
        super().__init__(params, text_key, image_key)

    def _prompt(self, sample: dict) -> str | None:
        if self.p.prompt_key:
            value = sample.get(self.p.prompt_key)
            if not isinstance(value, str):
                raise SampleError(f"field '{self.p.prompt_key}' (prompt_key) is missing or not text")
            return value
        return self.p.prompt

    def compute_batch(self, items):
        """Caption the first image of every sample, batched; the samples in `items` are updated in place."""
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        errors: list[str | None] = []
        prompts: list[str | None] = []
        for _, sample, _ in items:
            try:
                prompts.append(self._prompt(sample))
                errors.append(None)
            except SampleError as e:
                prompts.append(None)
                errors.append(str(e))
        ready, flat = self._first_images(items, errors)
        if ready:
            processor, model, device = self._load(AutoProcessor, AutoModelForImageTextToText)
            batch_prompts = [prompts[i] for i in ready]
            text = batch_prompts if all(p is not None for p in batch_prompts) else None
            inputs = processor(images=flat, text=text, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                ids = model.generate(**inputs, max_new_tokens=self.p.max_new_tokens)
            for i, caption in zip(ready, processor.batch_decode(ids, skip_special_tokens=True)):
                self._set_text(items[i][1], caption.strip())
        return [None if e == "" else e for e in errors]


class TaggingParams(OpParams):
    hf_tagger: str = opt("", "loraflow: local multi-label image-classification folder (transformers)")
    tag_field_name: str = opt("image_tags", "sample field the tags are written to (a list, best first)")
    threshold: float = opt(0.35, "loraflow: smallest sigmoid score of a kept tag (WD14's usual 0.35)", ge=0.0, le=1.0)
    max_tags: int | None = opt(None, "loraflow: keep at most this many tags", ge=1)
    append_to_text: bool = opt(False, "loraflow: also append the tags to the text, comma-separated")
    original_text_key: str = opt("original_text", "loraflow: field the original text is moved to (append_to_text)")
    device: str = opt("auto", "loraflow: cpu, cuda or auto")


class ImageTaggingMapper(LocalModelMapper):
    name = "image_tagging_mapper"
    Params = TaggingParams
    model_key = "hf_tagger"

    def compute_batch(self, items):
        """Tag the first image of every sample, batched; the samples in `items` are updated in place."""
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        errors: list[str | None] = [None] * len(items)
        ready, flat = self._first_images(items, errors)
        if ready:
            processor, model, device = self._load(AutoImageProcessor, AutoModelForImageClassification)
            with torch.no_grad():
                scores = torch.sigmoid(model(**processor(images=flat, return_tensors="pt").to(device)).logits.float())
            labels = model.config.id2label
            for i, row in zip(ready, scores.cpu()):
                order = [int(j) for j in torch.argsort(row, descending=True) if row[j] >= self.p.threshold]
                tags = [labels[j] for j in order[:self.p.max_tags]]
                sample = items[i][1]
                sample[self.p.tag_field_name] = tags
                if self.p.append_to_text and tags:
                    original = sample.get(self.text_key, "")
                    self._set_text(sample, ", ".join([original.rstrip(", ")] * bool(original.strip()) + tags))
        return [None if e == "" else e for e in errors]


class _FirstImage:
    """A sample's images seen as just its first one (captions describe one image)."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return 1

    def rgb(self, i: int):
        return self.images.rgb(0)
