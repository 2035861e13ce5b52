"""Tiny CLIP configs, aesthetic head weights and test images shared by the score tests."""
from __future__ import annotations

from pathlib import Path

IMAGE_SIZE, PATCH, PROJ = 32, 8, 16
TINY = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)


def tiny_clip_config(vocab_size: int):
    from transformers import CLIPConfig

    return CLIPConfig(
        text_config=dict(TINY, vocab_size=vocab_size, max_position_embeddings=77,
                         eos_token_id=vocab_size - 1, bos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1),
        vision_config=dict(TINY, image_size=IMAGE_SIZE, patch_size=PATCH),
        projection_dim=PROJ,
    )


def save_processor(folder: Path) -> None:
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    CLIPImageProcessorPil(size={"shortest_edge": IMAGE_SIZE},
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(folder)


def mlp_head_state(dim: int, relu: bool = False, seed: int = 1) -> dict:
    """improved-aesthetic-predictor `layers.*` keys with small random weights (dim -> ... -> 1)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sizes = (dim, 1024, 128, 64, 16, 1)
    indices = (0, 3, 6, 9, 11) if relu else (0, 2, 4, 6, 7)
    state = {}
    for i, (n_in, n_out) in zip(indices, zip(sizes, sizes[1:])):
        state[f"layers.{i}.weight"] = torch.randn(n_out, n_in, generator=g) / n_in ** 0.5
        state[f"layers.{i}.bias"] = torch.randn(n_out, generator=g) * 0.1 + (5.0 if n_out == 1 else 0.0)
    return state


def make_images(n: int = 3, size: tuple[int, int] = (48, 40)) -> list:
    """Deterministic, different RGB images (not square, so resize + crop both matter)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def by_hand_pixels(image):
    """CLIP preprocessing written out: shortest side -> 32 (bicubic), center crop 32x32, /255, mean/std."""
    import numpy as np
    import torch
    from PIL import Image

    w, h = image.size
    scale = IMAGE_SIZE / min(w, h)
    size = (IMAGE_SIZE, int(h * scale)) if w <= h else (int(w * scale), IMAGE_SIZE)
    x = np.asarray(image.convert("RGB").resize(size, Image.BICUBIC), dtype=np.float32) / 255.0  # (H, W, 3)
    top, left = (x.shape[0] - IMAGE_SIZE) // 2, (x.shape[1] - IMAGE_SIZE) // 2
    x = x[top:top + IMAGE_SIZE, left:left + IMAGE_SIZE]
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())[None]  # (1, 3, 32, 32)


def clip_scores_by_hand(clip_dir, images, prompts) -> list[float]:
    """CLIPScore = 100 * max(cos(image, text), 0) (torchmetrics), from the CLIP folder's weights with
    transformers' bare towers and projections: no image processor and no loraflow code involved."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    model, tokenizer = CLIPModel.from_pretrained(clip_dir).eval(), CLIPTokenizer.from_pretrained(clip_dir)
    scores = []
    with torch.no_grad():
        for image, prompt in zip(images, prompts):
            img = model.visual_projection(model.vision_model(pixel_values=by_hand_pixels(image)).pooler_output)
            ids = torch.tensor([tokenizer(prompt)["input_ids"]])
            txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
            cos = torch.nn.functional.cosine_similarity(img, txt).item()
            scores.append(100 * max(cos, 0.0))
    return scores


def by_hand_head(embeds, state: dict, indices: tuple[int, ...], relu: bool = False):
    """The improved-aesthetic-predictor MLP written out: Linear layers at `indices` (ReLU between when asked)."""
    import torch

    x = embeds
    for k, i in enumerate(indices):
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
        if relu and k < len(indices) - 1:
            x = torch.relu(x)
    return x[:, 0]


def reference_scores(vision, images, head_state, indices=(0, 2, 4, 6, 7), relu=False) -> list[float]:
    """Aesthetic scores by hand: CLIP image embedding (written-out preprocessing), L2-normalised, then the head."""
    import torch

    with torch.no_grad():
        out = []
        for image in images:
            emb = vision.visual_projection(vision.vision_model(pixel_values=by_hand_pixels(image)).pooler_output)
            out.append(float(by_hand_head(emb / emb.norm(dim=-1, keepdim=True), head_state, indices, relu)[0]))
    return out
