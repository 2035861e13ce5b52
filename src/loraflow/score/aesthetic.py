"""Aesthetic score: LAION's predictors, a small head over L2-normalised CLIP ViT-L/14 image
embeddings that outputs a 1-10 rating (the tutorial's competition gate is a mean of 6).

Weights layouts accepted (`load_aesthetic`):

* a simple-aesthetics-predictor folder (`shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE`,
  `aesthetics_predictor/modeling_v2.py::AestheticsPredictorV2Linear`): a `CLIPVisionModelWithProjection`
  (`vision_model.*`, `visual_projection.weight`) plus the head `layers.*` in one transformers
  folder, so it brings its own vision tower (V1 folders: a linear `predictor.*` head);
* the improved-aesthetic-predictor MLP file (christophschuhmann/improved-aesthetic-predictor,
  `sac+logos+ava1-l14-linearMSE.pth`, `simple_inference.py::MLP`): `layers.{0,2,4,6,7}` =
  Linear 768->1024->128->64->16->1 with Dropouts between and no activation; the `*-reluMSE`
  variant is `layers.{0,3,6,9,11}` with ReLUs;
* a plain linear head: `weight` (1, D) and `bias` (1,) (LAION-AI/aesthetic-predictor
  `sa_0_4_vit_l_14_linear.pth`).

A head file needs the CLIP it was trained on (ViT-L/14, 768-d embeddings) given as `--clip`.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from loraflow.errors import ModelLoadError
from loraflow.score.clip import ClipEncoder, load_image_processor
from loraflow.score.weights import folder_weights, read_state_dict, resolve_local
from loraflow.models.loading import resolve_device, resolve_dtype

if TYPE_CHECKING:
    import torch
    from PIL import Image

# `nn.Sequential` indices of the Linear layers -> ReLU between them? (Dropouts/ReLUs hold no weights.)
HEAD_LAYOUTS: dict[str, tuple[tuple[int, ...], bool]] = {
    "mlp-linear": ((0, 2, 4, 6, 7), False),  # *-linearMSE.pth, AestheticsPredictorV2Linear
    "mlp-relu": ((0, 3, 6, 9, 11), True),  # *-reluMSE.pth, AestheticsPredictorV2ReLU
}


@dataclass
class AestheticHead:
    """Linear layers applied in order, ReLU between them when `relu`; dropout is off (inference)."""

    layers: list[tuple[torch.Tensor, torch.Tensor | None]]  # (out, in) weight, (out,) bias
    relu: bool
    layout: str  # "linear" | "mlp-linear" | "mlp-relu"

    @property
    def in_features(self) -> int:
        return self.layers[0][0].shape[1]

    def to(self, device) -> AestheticHead:
        """A copy on `device`, in float32 (the head is tiny; float16 would only lose precision)."""
        import torch

        def move(t):
            return None if t is None else t.to(device, dtype=torch.float32)

        return AestheticHead([(move(w), move(b)) for w, b in self.layers], self.relu, self.layout)

    def __call__(self, embeds: torch.Tensor) -> torch.Tensor:
        """(N, D) normalised embeddings -> (N,) scores."""
        import torch
        import torch.nn.functional as F

        x = embeds.to(self.layers[0][0].device, dtype=torch.float32)
        for k, (weight, bias) in enumerate(self.layers):
            x = F.linear(x, weight, bias)
            if self.relu and k < len(self.layers) - 1:
                x = F.relu(x)
        return x[:, 0]


def head_from_state_dict(state: dict[str, torch.Tensor], source: str) -> AestheticHead:
    """Recognise one of the head layouts above; anything else is a one-line error listing keys."""
    for prefix in ("", "predictor."):  # plain linear head / simple-aesthetics-predictor V1
        if f"{prefix}weight" in state and all(k in (f"{prefix}weight", f"{prefix}bias") for k in state):
            return _checked(AestheticHead([(state[f"{prefix}weight"], state.get(f"{prefix}bias"))], False, "linear"),
                            source)
    indices = tuple(sorted(int(k.split(".")[1]) for k in state
                           if k.startswith("layers.") and k.endswith(".weight") and k.split(".")[1].isdigit()))
    for layout, (expected, relu) in HEAD_LAYOUTS.items():
        if indices == expected:
            layers = [(state[f"layers.{i}.weight"], state.get(f"layers.{i}.bias")) for i in expected]
            return _checked(AestheticHead(layers, relu, layout), source)
    shown = ", ".join(sorted(state)[:6]) + (", ..." if len(state) > 6 else "")
    raise ModelLoadError(f"{source}: not an aesthetic head (keys: {shown}); expected improved-aesthetic-predictor "
                         "`layers.0.weight ... layers.7.weight` or a linear `weight`/`bias`")


def _checked(head: AestheticHead, source: str) -> AestheticHead:
    prev = None
    for weight, bias in head.layers:
        if weight.ndim != 2 or (prev is not None and weight.shape[1] != prev) or (
                bias is not None and bias.shape != (weight.shape[0],)):
            raise ModelLoadError(f"{source}: aesthetic head layer shapes do not chain "
                                 f"({[tuple(w.shape) for w, _ in head.layers]})")
        prev = weight.shape[0]
    if prev != 1:
        raise ModelLoadError(f"{source}: aesthetic head outputs {prev} values, expected 1")
    return head


class AestheticPredictor:
    """Aesthetic head + the CLIP image encoder whose normalised embeddings it reads."""

    def __init__(self, head: AestheticHead, encoder: ClipEncoder, source: str):
        if head.in_features != encoder.dim:
            raise ModelLoadError(
                f"aesthetic head {source} reads {head.in_features}-d CLIP image embeddings but {encoder.name} "
                f"gives {encoder.dim}-d; pass the CLIP it was trained on (ViT-L/14: openai/clip-vit-large-patch14)")
        self.head = head.to(encoder.device)
        self.encoder = encoder
        self.source = source

    def scores_from_embeddings(self, embeds: torch.Tensor) -> list[float]:
        """(N, D) normalised image embeddings (from `self.encoder`) -> N scores."""
        import torch

        with torch.inference_mode():
            return self.head(embeds).float().cpu().tolist()

    def aesthetic_scores(self, images: Sequence[Image.Image]) -> list[float]:
        return self.scores_from_embeddings(self.encoder.image_embeddings(images))


def load_aesthetic(name: str, clip: ClipEncoder | None, device: str | None = "auto", dtype: str = "auto",
                   allow_pickle: bool = False, batch_size: int = 16) -> AestheticPredictor:
    """A predictor from a simple-aesthetics-predictor folder, or a head file read over `clip`."""
    path = resolve_local(name, "aesthetic model", "--aesthetic", allow_pickle)
    if path.is_dir():
        return _load_predictor_folder(path, device, dtype, allow_pickle, batch_size)
    head = head_from_state_dict(read_state_dict(path, allow_pickle), str(path))
    if clip is None:
        raise ModelLoadError(f"aesthetic head {path} needs the CLIP ViT-L/14 it was trained on: "
                             "pass its local folder with --clip")
    return AestheticPredictor(head, clip, str(path))


def _load_predictor_folder(folder: Path, device: str | None, dtype: str, allow_pickle: bool,
                           batch_size: int) -> AestheticPredictor:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json; pass a simple-aesthetics-predictor folder "
                             "(shunk031/aesthetics-predictor-v2-sac-logos-ava1-l14-linearMSE) or a head file")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config = {"projection_dim": config.get("projection_dim"), **config["vision_config"]} \
        if isinstance(config.get("vision_config"), dict) else config
    try:
        vision_config = CLIPVisionConfig.from_dict({k: v for k, v in config.items() if v is not None})
    except Exception as e:  # transformers validates configs with several error types
        raise ModelLoadError(f"{folder}/config.json is not a CLIP vision config: {str(e).splitlines()[0]}") from None
    state = read_state_dict(folder_weights(folder, "--aesthetic"), allow_pickle)
    head_state = {k: v for k, v in state.items() if k.startswith(("layers.", "predictor."))}
    head = head_from_state_dict(head_state, str(folder))
    # Older checkpoints also saved the `position_ids` buffer; it is rebuilt by the model.
    vision_state = {k: v for k, v in state.items() if k not in head_state and not k.endswith("position_ids")}
    model = CLIPVisionModelWithProjection(vision_config)
    missing, unexpected = model.load_state_dict(vision_state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise ModelLoadError(f"{folder}: weights do not fit a CLIP vision model with projection ({what})")
    device = resolve_device(device)
    model = model.to(device, dtype=resolve_dtype(dtype, device))
    processor = load_image_processor(folder, vision_config.image_size)
    return AestheticPredictor(head, ClipEncoder(model, processor, None, batch_size, name=str(folder)), str(folder))
