"""Base model -> frozen weights in the compute precision + trainable fp32 LoRA adapters (peft)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loraflow.train.config import TARGET_PRESETS, TEXT_ENCODER_TARGETS, TrainConfig

WEIGHT_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


@dataclass
class TrainModel:
    pipe: Any  # the diffusers pipeline (validation images use it)
    family: Any  # loraflow.models.families adapter class
    name: str  # base model name (metadata)
    source: str
    path: Any  # file/folder on disk, None for tiny models
    weight_dtype: Any  # torch dtype of the frozen weights
    noise_scheduler: Any  # DDPMScheduler over the family's betas
    prediction_type: str
    text_encoders: list = field(default_factory=list)  # those carrying LoRA (train_text_encoder)
    scorer: Any = None  # loraflow.score.Scorer for validation scores, loaded on first use

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def vae(self):
        return self.pipe.vae

    def trainable_parameters(self) -> list:
        modules = [self.unet, *self.text_encoders]
        return [p for m in modules for p in m.parameters() if p.requires_grad]


def load_for_training(config: TrainConfig, device: str) -> TrainModel:
    import torch

    from loraflow.models.loading import load_pipeline

    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    loaded = load_pipeline(config.model, family=config.family, vae=config.vae, dtype=weight_dtype, device=device)
    pipe, family = loaded.pipe, loaded.family
    for name in ("unet", "vae", *family.text_encoder_names):
        getattr(pipe, name).requires_grad_(False)
    if pipe.vae.config.get("force_upcast", False) and weight_dtype == "float16":
        pipe.vae.to(torch.float32)  # the SDXL VAE overflows in fp16 (use sdxl-vae-fp16-fix to avoid)
    noise_scheduler = family.noise_scheduler()
    prediction_type = config.prediction_type or noise_scheduler.config.prediction_type
    model = TrainModel(pipe, family, loaded.name, loaded.source, loaded.path, getattr(torch, weight_dtype),
                       noise_scheduler, prediction_type)
    torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the global RNG
    add_lora(model, config)
    if config.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    return model


def lora_config(rank: int, alpha: float, targets):
    from peft import LoraConfig

    # Gaussian A, zero B: the adapter starts as a no-op (diffusers' train_text_to_image_lora_sdxl.py)
    return LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian", target_modules=list(targets))


def add_lora(model: TrainModel, config: TrainConfig) -> None:
    """Inject LoRA into the UNet (and CLIP text encoders when asked); adapters in fp32."""
    import torch

    model.unet.add_adapter(lora_config(config.lora_rank, config.lora_alpha, TARGET_PRESETS[config.lora_targets]))
    if config.train_text_encoder:
        if model.family.name == "kolors":
            from loraflow.errors import ConfigError

            raise ConfigError("train_text_encoder: Kolors' ChatGLM encoder is not trained; only SDXL/SD1.5 CLIP")
        from peft import inject_adapter_in_model

        for name in model.family.text_encoder_names:
            encoder = getattr(model.pipe, name)
            # peft directly: transformers' `add_adapter` insists on a newer peft than diffusers needs
            te_config = lora_config(config.lora_rank, config.lora_alpha, TEXT_ENCODER_TARGETS)
            inject_adapter_in_model(te_config, encoder)
            encoder.peft_config = {"default": te_config}  # read by get/set_peft_model_state_dict
            model.text_encoders.append(encoder)
    for p in model.trainable_parameters():
        p.data = p.data.to(torch.float32)


def lora_state_dicts(model: TrainModel, unwrap=lambda m: m) -> tuple[dict, dict]:
    """peft-format state dicts: UNet, and {encoder attribute name: state} for text encoders."""
    from peft import get_peft_model_state_dict

    unet_state = get_peft_model_state_dict(unwrap(model.unet))
    te_states = {}
    for name in model.family.text_encoder_names:
        encoder = getattr(model.pipe, name)
        if any(encoder is e for e in model.text_encoders):
            te_states[name] = get_peft_model_state_dict(unwrap(encoder))
    return unet_state, te_states
