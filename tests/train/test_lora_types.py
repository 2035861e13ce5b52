"""Training LoRA / LoCon / LoHa / LoKr / DoRA through peft: the written file, read back by our loader
(the LyCORIS layout ComfyUI and A1111 load), computes what the trained peft model computes; resume
stays exact for a LyCORIS type."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import base_config
from loraflow.train.trainer import train


def _unet_out(unet):
    gen = torch.Generator().manual_seed(5)
    cfg = unet.config
    sample = torch.randn(1, cfg.in_channels, 8, 8, generator=gen)
    hidden = torch.randn(1, 7, cfg.cross_attention_dim, generator=gen)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    kw = {"added_cond_kwargs": {"text_embeds": torch.randn(1, pooled, generator=gen),
                                "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    with torch.no_grad():
        return unet(sample, 300, hidden, **kw).sample


@pytest.mark.parametrize("lora_type", ["locon", "loha", "lokr", "dora"])
def test_trained_type_loads_back_as_trained(tmp_path, shapes_dataset, lora_type):
    from peft import set_peft_model_state_dict

    from loraflow.models.lora.apply import apply_loras, remove_loras
    from loraflow.models.lora.compat import check_file
    from loraflow.models.lora.load import read_lora
    from loraflow.models.tiny import build_tiny_pipeline
    from loraflow.train.config import TrainConfig
    from loraflow.train.model_setup import lora_config, unet_targets

    config = base_config(tmp_path, shapes_dataset, max_steps=2, lora_type=lora_type, learning_rate=1e-2,
                         save_every=2)
    train(config)
    out = Path(config["output"])
    lora = read_lora(out / "lora.safetensors")
    kinds = {"locon": {"lora"}, "loha": {"loha"}, "lokr": {"lokr"}, "dora": {"lora"}}[lora_type]
    assert lora_type == "locon" or {a.kind for a in lora.adapters.values()} == kinds
    if lora_type == "locon":
        assert any(t.endswith("conv1") for t in lora.modules()) and not lora.adapters
    if lora_type == "dora":
        assert all(a.dora_scale is not None for a in lora.adapters.values())

    # the trained model, rebuilt from the checkpoint's peft state (on the fly, peft's own layers)
    pipe = build_tiny_pipeline("sdxl", seed=0)
    trained = build_tiny_pipeline("sdxl", seed=0).unet
    cfg = TrainConfig(**config)
    trained.add_adapter(lora_config(cfg.lora_rank, cfg.lora_alpha, unet_targets(cfg), lora_type))
    state = load_file(out / "checkpoints" / "step-000002" / "lora.safetensors")
    set_peft_model_state_dict(trained, {k[len("unet."):]: v.float() for k, v in state.items()})
    expected = _unet_out(trained)
    assert (expected - _unet_out(pipe.unet)).abs().max() > 1e-4  # training changed something
    apply_loras(pipe, [(out / "lora.safetensors", 1.0)], "sdxl")
    assert (_unet_out(pipe.unet) - expected).abs().max() < 2e-3  # file saved in float16
    remove_loras(pipe)
    report = check_file(out / "lora.safetensors", family="sdxl", pipe=pipe, measure=False, store=False)
    assert report.tools["ComfyUI"].ignored == [] and report.tools["A1111"].ignored == []


def test_resume_is_exact_for_loha(tmp_path, shapes_dataset):
    config = base_config(tmp_path / "full", shapes_dataset, max_steps=4, save_every=2, lora_type="loha",
                         learning_rate=1e-2)
    train(config)
    full = Path(config["output"])
    resumed = dict(config, output=str(tmp_path / "resumed"), resume=str(full / "checkpoints" / "step-000002"))
    train(resumed)
    a = load_file(full / "checkpoints" / "step-000004" / "lora.safetensors")
    b = load_file(tmp_path / "resumed" / "checkpoints" / "step-000004" / "lora.safetensors")
    assert a.keys() == b.keys() and any("hada_w1_a" in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_conv_preset_and_text_encoder_mlps_as_kohya_trains_them(tmp_path, shapes_dataset):
    """kohya's conv_dim set (ResNet convs + time-embedding projections + down/upsamplers) and its
    text-encoder MLPs, under names ComfyUI maps."""
    from loraflow.models.lora.compat import check_file
    from loraflow.models.lora.load import read_lora
    from loraflow.models.tiny import build_tiny_pipeline

    config = base_config(tmp_path, shapes_dataset, max_steps=1, lora_targets="conv", train_text_encoder=True,
                         text_encoder_targets="attn+mlp")
    train(config)
    path = Path(config["output"]) / "lora.safetensors"
    modules = read_lora(path).modules()
    for suffix in ("resnets.0.time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv", "resnets.0.conv1",
                   "mlp.fc1", "mlp.fc2"):
        assert any(t.endswith(suffix) for t in modules), suffix
    assert any(t.startswith("text_encoder_2.") and t.endswith("mlp.fc2") for t in modules)
    report = check_file(path, pipe=build_tiny_pipeline("sdxl", seed=0), measure=False, store=False)
    assert report.tools["ComfyUI"].ignored == [] and report.tools["diffusers"].ignored == []
    # training ran the same check against the model it trained, and stored it in the file
    stored = json.loads(read_lora(path).metadata["loraflow_compat"])
    assert stored["tools"]["ComfyUI"] == {"loaded": len(modules), "ignored": []}
