"""Tiny CLIP models and aesthetic heads, built in-process and saved in every supported layout."""
from __future__ import annotations

from pathlib import Path

import pytest

from score_helpers import IMAGE_SIZE, PATCH, PROJ, TINY, mlp_head_state, save_processor, tiny_clip_config


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A transformers CLIP folder: config, model.safetensors, tokenizer, preprocessor_config.json."""
    import torch
    from transformers import CLIPModel

    from loraflow.models.tiny_tokenizers import build_clip_tokenizer

    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_clip_tokenizer(tmp_path_factory.mktemp("clip-vocab"))
    torch.manual_seed(2)  # a seed whose tiny CLIP gives positive image-text cosines (depends on the vocab size)
    CLIPModel(tiny_clip_config(len(tokenizer))).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    save_processor(folder)
    return folder


@pytest.fixture(scope="session")
def head_files(tmp_path_factory) -> dict[str, Path]:
    """Aesthetic heads over the tiny CLIP's 16-d embeddings: MLP (.safetensors/.pth), ReLU MLP, linear."""
    import torch
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("heads")
    mlp = mlp_head_state(PROJ)
    g = torch.Generator().manual_seed(2)
    files = {"mlp": folder / "mlp.safetensors", "mlp_pth": folder / "sac+logos+ava1-l14-linearMSE.pth",
             "relu": folder / "relu.safetensors", "linear": folder / "linear.safetensors"}
    save_file(mlp, files["mlp"])
    torch.save(mlp, files["mlp_pth"])
    save_file(mlp_head_state(PROJ, relu=True), files["relu"])
    save_file({"weight": torch.randn(1, PROJ, generator=g), "bias": torch.tensor([5.0])}, files["linear"])
    return files


@pytest.fixture(scope="session")
def predictor_dir(tmp_path_factory) -> Path:
    """A simple-aesthetics-predictor V2 folder: CLIPVisionModelWithProjection + `layers.*` head."""
    import json

    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("aesthetics-predictor-v2-tiny")
    torch.manual_seed(3)
    config = CLIPVisionConfig(**TINY, image_size=IMAGE_SIZE, patch_size=PATCH, projection_dim=PROJ)
    vision = CLIPVisionModelWithProjection(config)
    state = {k: v.contiguous() for k, v in vision.state_dict().items()}
    state.update(mlp_head_state(PROJ, seed=4))
    save_file(state, folder / "model.safetensors")
    # As the hub folder has it: the predictor's own model_type and architecture name.
    (folder / "config.json").write_text(json.dumps(
        {**config.to_dict(), "model_type": "aesthetics_predictor", "architectures": ["AestheticsPredictorV2Linear"]}))
    save_processor(folder)
    return folder


@pytest.fixture
def score_cli(monkeypatch):
    """`loraflow.cli.main` with only the score command registered (other packages are mid-change)."""
    import loraflow.cli as cli

    monkeypatch.setattr(cli, "COMMAND_MODULES", ("loraflow.score.cli",))
    return cli.main


@pytest.fixture(scope="session")
def scorer(tiny_clip_dir, head_files):
    from loraflow.score import Scorer

    return Scorer.load(clip=str(tiny_clip_dir), aesthetic=str(head_files["mlp"]), device="cpu")
