"""Image captions from a local transformers model, through transformers' generic classes.

One path for every captioner transformers supports natively (`AutoProcessor` +
`AutoModelForImageTextToText`, formerly `AutoModelForVision2Seq`); the model's config decides how
it is prompted:

* "prefix" models (BLIP, BLIP-2, InstructBLIP): the image, optionally with a text prefix to
  continue ("a photo of"). English only: their decoders were trained on English captions.
* Florence-2: a task token (`<CAPTION>`, `<DETAILED_CAPTION>`, `<MORE_DETAILED_CAPTION>`). English only.
* chat VLMs (Qwen2-VL, Qwen2.5-VL, and any model whose processor has a chat template): an
  instruction in a user turn; `language: zh` asks for a Chinese caption in Chinese.

Weights are read from a local folder only (`local_files_only`); nothing runs code from it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from loraflow.errors import ConfigError
from loraflow.models.loading import resolve_device, resolve_dtype

log = logging.getLogger(__name__)

PREFIX_MODELS = frozenset({"blip", "blip-2", "instructblip"})
FLORENCE_MODELS = frozenset({"florence2"})
FLORENCE_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")
# What a chat VLM is asked when the recipe gives no prompt. Kolors was trained on Chinese captions,
# so the Chinese instruction asks for a Chinese answer in Chinese (VLMs answer in the prompt's language).
CHAT_PROMPTS = {
    "en": "Describe this image in one detailed sentence for a text-to-image training caption.",
    "zh": "用一句详细的中文描述这张图片，作为文生图训练的标注。只输出描述。",
}
WEIGHTS_HINT = ("download one beforehand, e.g. `huggingface-cli download Salesforce/blip-image-captioning-base "
                "--local-dir DIR` (or Salesforce/blip2-opt-2.7b, microsoft/Florence-2-base, Qwen/Qwen2-VL-2B-Instruct)")


def check_weights(path: str, key: str) -> Path:
    """The local model folder, or a one-line error naming the path and where weights come from."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        what = "does not exist" if not folder.exists() else "has no config.json"
        raise ConfigError(f"{key} '{path}' {what}: it must be a local transformers model folder "
                          f"(loraflow never downloads during a run); {WEIGHTS_HINT}")
    return folder


def check_language(folder: Path, language: str, key: str) -> None:
    """Refuse a language the model cannot write, before any work (reads config.json only)."""
    if language == "en":
        return
    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    if model_type in PREFIX_MODELS | FLORENCE_MODELS:
        raise ConfigError(f"{key} '{folder}': language '{language}' needs a chat VLM (e.g. Qwen2-VL); "
                          f"a '{model_type}' model writes English captions only")


@dataclass
class CaptionRequest:
    """One image to caption: its prompt (None: the model's default) and how many candidates."""

    image: Image.Image
    prompt: str | None


class Captioner:
    """A loaded captioning model: `caption(requests, num)` -> `num` candidate captions per request."""

    def __init__(self, model, processor, style: str, language: str, device: str, max_new_tokens: int, seed: int):
        self.model, self.processor, self.style = model, processor, style
        self.language, self.device = language, device
        self.max_new_tokens, self.seed = max_new_tokens, seed

    @classmethod
    def load(cls, path: str, language: str = "en", device: str = "auto", max_new_tokens: int = 128,
             seed: int = 0) -> "Captioner":
        import torch
        import transformers
        from packaging.version import Version

        folder = check_weights(path, "hf_img2seq")
        model_type = transformers.AutoConfig.from_pretrained(folder, local_files_only=True).model_type
        processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        style = ("prefix" if model_type in PREFIX_MODELS else "florence" if model_type in FLORENCE_MODELS
                 else "chat" if getattr(processor, "chat_template", None) else None)
        if style is None:
            raise ConfigError(f"hf_img2seq '{path}': a '{model_type}' model is not a captioner loraflow knows "
                              "(BLIP, BLIP-2, InstructBLIP, Florence-2, or a chat VLM with a chat template such as Qwen2-VL)")
        if style != "chat":  # BLIP-class and Florence-2 write English only: any other language is refused
            check_language(folder, language, "hf_img2seq")
        auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
        device = resolve_device(device)
        dtype = resolve_dtype("auto", device)
        # transformers >= 4.56 calls it `dtype`; float32 (CPU) is every version's default
        new_kw = Version(transformers.__version__) >= Version("4.56")
        dtype_kw = {} if dtype == torch.float32 else {"dtype" if new_kw else "torch_dtype": dtype}
        model = auto.from_pretrained(folder, local_files_only=True, **dtype_kw).to(device).eval()
        if style == "chat" and hasattr(processor, "tokenizer"):
            processor.tokenizer.padding_side = "left"  # batched generation continues from the right end
        log.info("captioner %s (%s, %s) on %s", folder, model_type, style, device)
        return cls(model, processor, style, language, device, max_new_tokens, seed)

    def default_prompt(self) -> str | None:
        if self.style == "chat":
            return CHAT_PROMPTS[self.language]
        return FLORENCE_TASKS[0] if self.style == "florence" else None

    def caption(self, requests: list[CaptionRequest], num: int = 1, batch_size: int = 8) -> list[list[str]]:
        """`num` captions per request. One `generate` call per run of up to `batch_size` images that
        share a prompt (BLIP pads text on the right, so mixed prompt lengths cannot share a batch).
        num == 1 decodes greedily (the same caption every run); num > 1 samples, seeded."""
        out: list[list[str]] = [[] for _ in requests]
        groups: dict[str | None, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.prompt if r.prompt is not None else self.default_prompt(), []).append(i)
        for prompt, idx in groups.items():
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                for _ in range(num):
                    texts = self._generate([requests[i].image for i in part], prompt, sample=num > 1)
                    for i, text in zip(part, texts):
                        out[i].append(text)
        return out

    def _generate(self, images: list[Image.Image], prompt: str | None, sample: bool) -> list[str]:
        import torch

        if self.style == "chat":
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            inputs = self.processor(images=images, text=[text] * len(images), padding=True, return_tensors="pt")
        else:
            texts = [prompt] * len(images) if prompt else None
            inputs = self.processor(images=images, text=texts, return_tensors="pt")
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        if sample:  # generate() takes no generator: seed the global one, a new seed per round
            torch.manual_seed(self.seed)
            self.seed += 1
        with torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=sample)
        if self.style == "chat":  # (B, prompt + new): keep only the answer
            ids = ids[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]
