"""Tiny pipelines (built once per session) and helpers for LoRA tests: a peft-trained LoRA with
random non-zero lora_B, fixed UNet inputs, and an independent reference that merges LoRA deltas
into a copy of the base weights (W + weight * alpha / rank * B @ A)."""
from __future__ import annotations

import copy

import pytest
import torch

from lora_helpers import ATTENTION, TEXT


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models are all per-op overhead: one thread is 3-10x faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pipes():
    """`pipes("sdxl")` -> a shared tiny pipeline; tests leave it without LoRAs (see `pipe`)."""
    from loraflow.models.tiny import build_tiny_pipeline

    cache: dict[str, object] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = build_tiny_pipeline(family, seed=0)
        return cache[family]

    return get


@pytest.fixture
def pipe_of(pipes):
    """Like `pipes`, but every pipeline handed out is stripped of LoRAs after the test."""
    from loraflow.models.lora.apply import remove_loras

    used = []

    def get(family: str):
        pipe = pipes(family)
        remove_loras(pipe)
        used.append(pipe)
        return pipe

    yield get
    for pipe in used:
        remove_loras(pipe)


def _randomize_lora_b(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # gaussian init leaves lora_B at zero: a LoRA that does nothing
                param.copy_(torch.randn(param.shape, generator=gen) * 0.1)


@pytest.fixture
def trained():
    """`trained(pipe, rank=4, alpha=4, seed=0, unet_targets=ATTENTION, text=False)` ->
    (peft UNet, {"text_encoder": peft model, ...}, unet peft state dict, {name: text encoder state dict})
    built on copies of the pipeline's models, the way training does it (`add_adapter`)."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    def make(pipe, *, rank=4, alpha=4, seed=0, unet_targets=ATTENTION, text=False):
        torch.manual_seed(seed)
        unet = copy.deepcopy(pipe.unet)
        unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=unet_targets,
                                    init_lora_weights="gaussian"))
        _randomize_lora_b(unet, seed)
        encoders, states = {}, {}
        for i, name in enumerate(("text_encoder", "text_encoder_2") if text else ()):
            model = getattr(pipe, name, None)
            if model is None:
                continue
            # peft directly: transformers 5.24's `add_adapter` demands peft >= 0.22 (0.21 is installed)
            model = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TEXT,
                                                       init_lora_weights="gaussian"), copy.deepcopy(model))
            _randomize_lora_b(model, seed + 10 + i)
            encoders[name] = model
            states[name] = get_peft_model_state_dict(model)
        return unet, encoders, get_peft_model_state_dict(unet), states

    return make


def _unet_inputs(unet):
    gen = torch.Generator().manual_seed(123)
    cfg = unet.config
    sample = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    kwargs = {}
    if cfg.encoder_hid_dim_type == "text_proj":  # Kolors: ChatGLM states, projected inside the UNet
        hidden = torch.randn(2, 7, cfg.encoder_hid_dim, generator=gen)
    else:
        hidden = torch.randn(2, 7, cfg.cross_attention_dim, generator=gen)
    if cfg.addition_embed_type == "text_time":
        pooled_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, pooled_dim, generator=gen),
                                       "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    return sample, hidden, kwargs


@pytest.fixture
def unet_out():
    """`unet_out(unet)` -> the UNet's prediction for fixed inputs (batch of 2, t=500)."""

    def run(unet):
        sample, hidden, kwargs = _unet_inputs(unet)
        with torch.no_grad():
            return unet(sample, 500, hidden, **kwargs).sample

    return run


@pytest.fixture
def text_out():
    def run(text_encoder):
        ids = torch.tensor([[5, 17, 42, 99, 3, 7]])
        with torch.no_grad():
            return text_encoder(ids)[0]

    return run


@pytest.fixture
def merged():
    """`merged(model, [(lora_file, component, weight), ...])` -> a copy of `model` with every LoRA
    delta added to its weights by hand: W += weight * alpha / rank * B @ A (independent of peft)."""

    def build(model, loras):
        model = copy.deepcopy(model)
        modules = dict(model.named_modules())
        with torch.no_grad():
            for lora, component, weight in loras:
                for target, (rank, alpha) in lora.modules().items():
                    if not target.startswith(component + "."):
                        continue
                    name = target[len(component) + 1:]
                    if name not in modules:
                        name = name.removeprefix("text_model.")
                    w = modules[name].weight
                    down = lora.neutral[f"{target}.lora_A.weight"].float().reshape(rank, -1)
                    up = lora.neutral[f"{target}.lora_B.weight"].float().reshape(w.shape[0], rank)
                    w += (weight * alpha / rank * (up @ down)).reshape(w.shape).to(w.dtype)
        return model

    return build
