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
