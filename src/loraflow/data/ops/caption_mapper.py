"""data-juicer's `image_captioning_mapper` on a local transformers image-to-text model.

Source: data_juicer/ops/mapper/image_captioning_mapper.py (py-data-juicer 1.6.1): same name and the
parameters a recipe gives (`hf_img2seq`, `prompt`, `prompt_key`, `caption_num`, ...). Any model
`AutoModelForImageTextToText` loads from a folder works (BLIP, BLIP-2, ...); weights are read from
that folder only, never downloaded.

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


class ImageCaptioningMapper(ModelOp):
    name = "image_captioning_mapper"
    Params = CaptioningParams
    maps: ClassVar[bool] = True  # changes samples instead of judging them (see filter_run._evaluate_model)

    def __init__(self, params, text_key: str, image_key: str):
        super().__init__(params, text_key, image_key)
        if params.caption_num != 1:
            raise ConfigError(f"{self.name}: caption_num={params.caption_num}: only 1 is supported (loraflow "
                              "replaces the caption and keeps the original in original_text_key)")
        if not Path(params.hf_img2seq).is_dir():
            raise ConfigError(f"{self.name}: hf_img2seq={params.hf_img2seq!r} is not a local model folder "
                              "(loraflow never downloads during a run; download it first)")
        self._model: Any = None

    def __getstate__(self) -> dict[str, Any]:  # workers load their own model
        return {**self.__dict__, "_scorer": None, "_model": None}

    def _load(self):
        if self._model is None:
            import torch
            from transformers import AutoModelForImageTextToText, AutoProcessor

            device = self.p.device if self.p.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            try:
                processor = AutoProcessor.from_pretrained(self.p.hf_img2seq, local_files_only=True)
                model = AutoModelForImageTextToText.from_pretrained(self.p.hf_img2seq, local_files_only=True)
            except (OSError, ValueError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise ConfigError(f"{self.name}: cannot load {self.p.hf_img2seq}: {first}") from None
            self._model = (processor, model.to(device).eval(), device)
        return self._model

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

        errors: list[str | None] = []
        prompts: list[str | None] = []
        for images, sample, _ in items:
            try:
                prompts.append(self._prompt(sample))
                errors.append(None if len(images) else "")  # "": no image, kept unchanged
            except SampleError as e:
                prompts.append(None)
                errors.append(str(e))
        todo = [(i, it) for i, (it, e) in enumerate(zip(items, errors)) if e is None]
        flat, decode_errors = _decode_all([(_FirstImage(it[0]), it[1], it[2]) for _, it in todo])
        for (i, _), error in zip(todo, decode_errors):
            errors[i] = error
        ready = [i for (i, _), error in zip(todo, decode_errors) if error is None]
        if ready:
            processor, model, device = self._load()
            batch_prompts = [prompts[i] for i in ready]
            text = batch_prompts if all(p is not None for p in batch_prompts) else None
            inputs = processor(images=flat, text=text, return_tensors="pt", padding=True).to(device)
            with torch.no_grad():
                ids = model.generate(**inputs, max_new_tokens=self.p.max_new_tokens)
            captions = processor.batch_decode(ids, skip_special_tokens=True)
            for i, caption in zip(ready, captions):
                self._update(items[i][1], caption.strip())
        return [None if e == "" else e for e in errors]

    def _update(self, sample: dict, caption: str) -> None:
        original = sample.get(self.text_key, "")
        sample[self.p.original_text_key] = original
        # keep data-juicer's image token in front when the original had it (its text layout)
        token = DJ_SPECIAL_TOKENS[0]
        sample[self.text_key] = f"{token}{caption}" if isinstance(original, str) and original.startswith(token) else caption

    def decide(self, stats):
        return None


class _FirstImage:
    """A sample's images seen as just its first one (captions describe one image)."""

    def __init__(self, images):
        self.images = images

    def __len__(self) -> int:
        return 1

    def rgb(self, i: int):
        return self.images.rgb(0)
