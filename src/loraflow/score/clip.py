"""CLIP image/text embeddings and CLIPScore, from a local transformers CLIP folder.

CLIPScore follows torchmetrics' `CLIPScore` (`torchmetrics/functional/multimodal/clip_score.py`):
100 x max(cos(image, text), 0), the scaled form of Hessel et al. 2021, "CLIPScore: A
Reference-free Evaluation Metric for Image Captioning" (Eq. 1 uses w = 2.5 instead of 100).

Images are preprocessed by transformers' PIL backend (`CLIPImageProcessorPil`: shortest side
resized with bicubic, center crop, CLIP mean/std), so torchvision is not needed.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loraflow.errors import InputError, ModelLoadError
from loraflow.images import to_rgb
from loraflow.score.weights import folder_weights, resolve_local
from loraflow.models.loading import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch
    from PIL import Image


class ClipEncoder:
    """A CLIP model (or just its vision tower) with its preprocessing, on one device.

    `model` is a `CLIPModel` or a `CLIPVisionModelWithProjection`: both have `vision_model` and
    `visual_projection`; only the former can embed text.
    """

    def __init__(self, model: Any, image_processor: Any, tokenizer: Any = None, batch_size: int = 16,
                 name: str = "clip"):
        self.model = model.eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name

    @property
    def device(self) -> torch.device:
        return self.model.visual_projection.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual_projection.weight.dtype

    @property
    def dim(self) -> int:
        return self.model.visual_projection.out_features

    @property
    def can_embed_text(self) -> bool:
        return self.tokenizer is not None and hasattr(self.model, "text_model")

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, 3, S, S) float32, as the CLIP processor prepares them."""
        rgb = [to_rgb(im) for im in images]  # an RGBA picture is scored on white, as files are decoded
        return self.image_processor(images=rgb, return_tensors="pt")["pixel_values"]

    def image_embeddings(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) L2-normalised image embeddings (float32, on CPU)."""
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                pixels = self.pixel_values(images[i:i + self.batch_size]).to(self.device, self.dtype)
                pooled = self.model.vision_model(pixel_values=pixels).pooler_output  # (B, hidden)
                out.append(_normalise(self.model.visual_projection(pooled)))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """(N, D) L2-normalised text embeddings; prompts are truncated to CLIP's 77 tokens."""
        import torch

        if not self.can_embed_text:
            raise ModelLoadError(f"{self.name} is a vision-only model; text needs a full CLIP folder (--clip)")
        max_length = self.model.config.text_config.max_position_embeddings
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[i:i + self.batch_size]), padding=True, truncation=True,
                                        max_length=max_length, return_tensors="pt").to(self.device)
                pooled = self.model.text_model(input_ids=tokens["input_ids"],
                                               attention_mask=tokens["attention_mask"]).pooler_output
                out.append(_normalise(self.model.text_projection(pooled)))
        return torch.cat(out) if out else torch.zeros(0, self.dim)

    def clip_score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """CLIPScore of each (image, text) pair, in [0, 100]."""
        if len(images) != len(texts):
            raise InputError(f"clip_score: {len(images)} images but {len(texts)} texts")
        return clip_score_from_embeddings(self.image_embeddings(images), self.text_embeddings(texts))


def clip_score_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
    """100 x max(cos, 0) of row-aligned (N, D) normalised embeddings (torchmetrics' CLIPScore)."""
    cos = (image_embeds.float() * text_embeds.float()).sum(dim=-1)
    return (100.0 * cos.clamp(min=0)).tolist()


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # Norms in float32: a float16 sum of 768 squares can overflow.
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def load_image_processor(folder: Path, image_size: int):
    """The folder's `preprocessor_config.json` on the PIL backend, or CLIP's defaults at `image_size`."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    if (folder / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(str(folder), local_files_only=True)
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size})


def load_clip(name: str, device: str | None = "auto", dtype: str = "auto", allow_pickle: bool = False,
              batch_size: int = 16) -> ClipEncoder:
    """A `ClipEncoder` from a local transformers CLIP folder (config, weights, tokenizer, preprocessor).

    A hub id (`openai/clip-vit-large-patch14`) works only from the HF cache or with network.
    """
    from transformers import CLIPModel, CLIPTokenizer

    folder = resolve_local(name, "CLIP model", "--clip", allow_pickle)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise ModelLoadError(f"CLIP model {folder} is not a transformers folder (config.json + model.safetensors); "
                             "pass e.g. a local copy of openai/clip-vit-large-patch14 with --clip")
    weights = folder_weights(folder, "--clip")
    if weights.suffix == ".bin" and not allow_pickle:
        raise ModelLoadError(f"{weights} is a pickle file; convert it to model.safetensors or pass --allow-pickle")
    device = resolve_device(device)
    try:
        model, info = CLIPModel.from_pretrained(
            str(folder), local_files_only=True, dtype=resolve_dtype(dtype, device),
            use_safetensors=weights.suffix == ".safetensors", output_loading_info=True)
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:  # what transformers raises for bad folders
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ModelLoadError(f"cannot load CLIP from {folder}: {first}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing:  # transformers would fill them with random weights: scores would be noise
        raise ModelLoadError(f"{folder} is not a full CLIP model (missing {sorted(missing)[0]}); "
                             "pass a CLIP folder such as openai/clip-vit-large-patch14 with --clip")
    processor = load_image_processor(folder, model.config.vision_config.image_size)
    return ClipEncoder(model.to(device), processor, tokenizer, batch_size, name=str(folder))
