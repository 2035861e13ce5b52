"""The trained LoRA as files people use: kohya format (ComfyUI, AUTOMATIC1111, Civitai) with
`ss_*` / `modelspec.*` metadata, and optionally the diffusers/peft file.

The files are written by the LoRA-formats layer; this module supplies what only training knows
(the training parameters, base model, tag frequencies). Alpha is stored in the file per module
(`.alpha`), so a loader cannot pick another (the tutorial trained with 4 and loaded with 2).
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

from loraflow.train.config import TrainConfig
from loraflow.models.lora.adapter_types import LYCORIS_TYPES, save_adapter
from loraflow.models.lora.save import save_lora
from loraflow.train.model_setup import lora_state_dicts



def tag_frequency(captions: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """kohya `ss_tag_frequency`: {dataset folder: {tag: count}}, tags split on ',' and '，'."""
    freq: dict[str, Counter] = {}
    for folder, caption in captions:
        tags = [t.strip() for t in caption.replace("，", ",").split(",") if t.strip()]
        freq.setdefault(folder, Counter()).update(tags)
    return {k: dict(v) for k, v in freq.items()}


def training_metadata(config: TrainConfig, *, family: str, model_name: str, model_hash: str | None,
                      num_images: int, steps: int, epochs: int, started: float, prediction_type: str) -> dict[str, str]:
    """The `ss_*` / `modelspec.*` keys only training knows (all strings, as safetensors requires). The
    format keys (`ss_network_dim`, `ss_network_alpha`, `modelspec.architecture`, ...) come from `save_lora`."""
    meta = {
        "ss_network_args": json.dumps({"loraflow_targets": config.lora_targets, "loraflow_type": config.lora_type}),
        "ss_sd_model_name": model_name,
        "ss_num_train_images": str(num_images),
        "ss_num_epochs": str(epochs),
        "ss_max_train_steps": str(steps),
        "ss_learning_rate": str(config.learning_rate),
        "ss_unet_lr": str(config.learning_rate),
        "ss_text_encoder_lr": str(config.learning_rate if config.train_text_encoder else 0),
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": str(config.lr_warmup_steps),
        "ss_optimizer": config.optimizer,
        "ss_batch_size_per_device": str(config.batch_size),
        "ss_gradient_accumulation_steps": str(config.gradient_accumulation),
        "ss_mixed_precision": config.mixed_precision,
        "ss_gradient_checkpointing": str(config.gradient_checkpointing),
        "ss_seed": str(config.seed),
        "ss_noise_offset": str(config.noise_offset),
        "ss_min_snr_gamma": str(config.min_snr_gamma),
        "ss_caption_dropout_rate": str(config.caption_dropout),
        "ss_caption_tag_dropout_rate": str(config.tag_dropout),
        "ss_shuffle_caption": str(config.shuffle_caption),
        "ss_keep_tokens": str(config.keep_tokens),
        "ss_prior_loss_weight": str(config.reg_weight),
        "ss_masked_loss": str(config.masked_loss),
        "ss_enable_bucket": str(config.bucketing),
        "ss_max_grad_norm": str(config.max_grad_norm),
        "ss_training_started_at": str(started),
        "ss_steps": str(steps),
        "modelspec.prediction_type": prediction_type,
        "modelspec.trigger_phrase": config.caption_prefix.strip(" ,"),
        "loraflow_base_model": model_name,
    }
    if model_hash:
        meta["ss_new_sd_model_hash"] = model_hash  # full SHA-256 of the checkpoint (kohya, Civitai)
    return meta


def save_lora_files(output: Path, name: str, unet_state: dict, te_states: dict, *, family: str, rank: int,
                    alpha: float, dtype, resolution: int, tag_freq: dict, metadata: dict[str, str],
                    with_diffusers: bool, lora_type: str = "lora") -> tuple[Path, Path | None]:
    """OUTPUT/NAME.safetensors (kohya) and optionally OUTPUT/NAME.diffusers.safetensors, written
    atomically by the LoRA-formats layer (`loraflow.models.lora.save.save_lora`; LoHa / LoKr / DoRA:
    `adapter_types.save_adapter`, kohya layout only)."""

    common = dict(family=family, rank=rank, alpha=alpha, dtype=dtype, metadata=metadata, output_name=name,
                  resolution=resolution, tag_frequency=tag_freq)
    if lora_type in LYCORIS_TYPES:
        return Path(save_adapter(output / f"{name}.safetensors", unet_state, te_states, lora_type=lora_type,
                                 **common)), None
    kohya = save_lora(output / f"{name}.safetensors", unet_state, te_states, fmt="kohya", **common)
    diffusers = None
    if with_diffusers:
        diffusers = save_lora(output / f"{name}.diffusers.safetensors", unet_state, te_states, fmt="diffusers",
                              **common)
    return Path(kohya), diffusers and Path(diffusers)


def write_outputs(config, model, data, accelerator, step, started, suffix: str = ""):
    """OUTPUT/NAME{suffix}.safetensors (+ the diffusers file for the main LoRA) from the adapters as they are."""
    import torch

    unet_state, te_states = lora_state_dicts(model, accelerator.unwrap_model)
    model_hash = model.base_sha256
    epochs = math.ceil(step * config.gradient_accumulation * accelerator.num_processes / data.plan.batches_per_epoch)
    meta = training_metadata(
        config, family=model.family.name, model_name=model.name, model_hash=model_hash, num_images=len(data.train_items),
        steps=step, epochs=epochs, started=started, prediction_type=model.prediction_type)
    tags = tag_frequency([(i.image_path.parent.name, config.caption_prefix + i.caption) for i in data.train_items])
    return save_lora_files(
        Path(config.output), config.name + suffix, unet_state, te_states, family=model.family.name, rank=config.lora_rank,
        alpha=config.lora_alpha, dtype=getattr(torch, config.save_dtype), resolution=config.resolution,
        tag_freq=tags, metadata=meta, with_diffusers=config.save_format == "kohya+diffusers" and not suffix,
        lora_type=config.lora_type)
