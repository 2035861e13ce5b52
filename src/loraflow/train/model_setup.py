"""Base model -> frozen weights in the compute precision + trainable fp32 LoRA adapters (peft).

The VAE and text encoders can be left unloaded (`encoders=False`) when their outputs are all
cached; `EncoderIdentity` is what the caches need to know about them, read from the model
folder's files without loading weights (`identity_from_files`) or from the built modules.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.models.hashing import model_weights_files, sha256_file
from loraflow.models.loading import vae_dtype
from loraflow.train.config import TARGET_PRESETS, TEXT_ENCODER_PRESETS, TrainConfig
from loraflow.models.families import FAMILIES, get_family
from loraflow.models.loading import DEMO, demo_model_dir, detect_folder_family, load_pipeline
from loraflow.models.lora.adapter_types import peft_config

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
    validation_embeds: dict = field(default_factory=dict)  # prompt -> (positive, negative) PromptEmbeds, host memory
    offload_traffic: Any = None  # activation_offload.Traffic when offload_activations is on

    @property
    def unet(self):
        return self.pipe.unet

    @functools.cached_property
    def base_sha256(self) -> str | None:
        """SHA-256 of the base checkpoint file (a diffusers folder: its UNet weights, see
        models.hashing), hashed once per run: every saved LoRA (best, EMA, final) records it."""
        if self.path is None:
            return None
        files = model_weights_files(self.path)
        return sha256_file(files[0]) if len(files) == 1 else None

    @property
    def vae(self):
        return self.pipe.vae

    def trainable_parameters(self) -> list:
        modules = [self.unet, *self.text_encoders]
        return [p for m in modules for p in m.parameters() if p.requires_grad]


def load_for_training(config: TrainConfig, device: str, encoders: bool = True) -> TrainModel:
    """`encoders=False`: the VAE and text encoders are not loaded (pipe.vae etc. are None)."""
    import torch

    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    skip = () if encoders else ("vae", *dict.fromkeys(n for f in FAMILIES.values() for n in f.text_encoder_names))
    # Loaded on the CPU; the VAE and text encoders go to the device for the cache pass, the UNet only after
    # it (accelerator.prepare places it), so a ChatGLM and a UNet never share device memory.
    # text_encoders_on_cpu: the encoders never come to the device at all; stream_text_encoders: one layer at a
    # time, in the cache pass (precache.stream_text_encoders).
    loaded = load_pipeline(config.model, family=config.family, vae=config.vae, dtype=weight_dtype, device="cpu",
                           skip=skip)
    pipe, family = loaded.pipe, loaded.family
    encoders = () if config.text_encoders_on_cpu or config.stream_text_encoders else family.text_encoder_names
    for name in ("vae", *encoders):
        if getattr(pipe, name) is not None:
            getattr(pipe, name).to(device)
    for name in ("unet", "vae", *family.text_encoder_names):
        if getattr(pipe, name) is not None:
            getattr(pipe, name).requires_grad_(False)
    if pipe.vae is not None and vae_dtype(pipe.vae.config, weight_dtype) != weight_dtype:
        pipe.vae.to(torch.float32)
    noise_scheduler = family.noise_scheduler()
    prediction_type = config.prediction_type or noise_scheduler.config.prediction_type
    model = TrainModel(pipe, family, loaded.name, loaded.source, loaded.path, getattr(torch, weight_dtype),
                       noise_scheduler, prediction_type)
    prepare_unet(model, config)
    return model


def prepare_unet(model: TrainModel, config: TrainConfig) -> None:
    """Frozen base -> trainable: fp8 storage, LoRA adapters, activation-memory settings. `loraflow plan`
    runs this same function on the meta device."""
    import torch

    if config.base_fp8:  # before the adapters, so the LoRA layers stay fp32
        from loraflow.train.fp8_base import store_base_in_fp8

        store_base_in_fp8(model.unet, model.weight_dtype)
    torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the global RNG
    add_lora(model, config)
    checkpointing = config.gradient_checkpointing
    if config.offload_activations:  # the host copies' traffic is read by `loraflow plan train`
        from loraflow.train.activation_offload import Traffic, offload_saved_activations, offloaded_checkpointing

        model.offload_traffic = Traffic()
        if checkpointing:  # the checkpointed blocks' inputs
            model.unet.enable_gradient_checkpointing(offloaded_checkpointing(traffic=model.offload_traffic))
        else:  # every large activation the UNet's forward keeps
            offload_saved_activations(model.unet, traffic=model.offload_traffic)
    elif checkpointing:
        model.unet.enable_gradient_checkpointing()
    from loraflow.train.activation_memory import keep_less_for_backward, recompute_feed_forward_gates

    # a third less feed-forward activation memory; recompute="ff" redoes the projection (a matmul) as well,
    # which checkpointed blocks recompute anyway
    redo = config.recompute if not checkpointing else "none"
    recompute_feed_forward_gates(model.unet, projection=redo in ("ff", "ff+cross"))
    # norms, frozen convs, LoRA inputs: the same ops, less kept
    keep_less_for_backward(model.unet, cross_attention=redo == "ff+cross")


@dataclass
class EncoderIdentity:
    """What the caches need to know about the frozen encoders, with or without them loaded."""
    family: Any  # loraflow.models.families adapter class
    vae_key: str  # VAE weights fingerprint + the dtype it encodes in
    text_key: str  # text-encoder weights fingerprint (+ dtype)
    vae_config: Any  # mapping with the latents' scaling_factor / shift_factor


def identity_of(model: TrainModel) -> EncoderIdentity:
    """From the built modules (tiny and single-file models, whose files are not a diffusers folder)."""
    from loraflow.train.cache import module_fingerprint

    vae = model.vae
    encoders = [getattr(model.pipe, n) for n in model.family.text_encoder_names]
    return EncoderIdentity(model.family, f"{module_fingerprint(vae)}:{next(vae.parameters()).dtype}",
                           module_fingerprint(*encoders), vae.config)


def identity_from_files(config: TrainConfig) -> EncoderIdentity | None:
    """From a diffusers folder's weight files and configs, without loading a weight. None where that
    is not possible (tiny or single-file model, a lone VAE file, pickle weights): use `identity_of`."""
    from loraflow.train.cache import file_fingerprint

    if not config.model or config.model.startswith("tiny:"):
        return None
    folder = demo_model_dir() if config.model == DEMO else Path(config.model).expanduser()
    family_name = config.family or (detect_folder_family(folder) if folder.is_dir() else None)
    if family_name is None:
        return None
    family = get_family(family_name)
    vae_dir = folder / "vae"
    if config.vae:  # the override as load_vae reads it: a folder, or a file next to its config.json
        override = Path(config.vae).expanduser()
        vae_dir = override if override.is_dir() else override.parent
    components = [_component_files(vae_dir), *(_component_files(folder / n) for n in family.text_encoder_names)]
    if not all(components):
        return None
    weight_dtype = WEIGHT_DTYPES[config.mixed_precision]
    try:
        vae_config = _vae_config(vae_dir)
        vae_key = f"{file_fingerprint(*components[0])}:{vae_dtype(vae_config, weight_dtype)}"
        text_key = f"{file_fingerprint(*(f for files in components[1:] for f in files))}:{weight_dtype}"
    except (OSError, ValueError, KeyError):  # unreadable: loading will say what is wrong
        return None
    return EncoderIdentity(family, vae_key, text_key, vae_config)


def _component_files(folder: Path) -> list[Path]:
    """config.json + safetensors weights of one component folder; [] when either is missing."""
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return [folder / "config.json", *weights] if weights and (folder / "config.json").is_file() else []


def _vae_config(folder: Path) -> dict:
    """config.json over AutoencoderKL's defaults: what `vae.config` holds once loaded."""
    import inspect

    from diffusers import AutoencoderKL

    defaults = {k: p.default for k, p in inspect.signature(AutoencoderKL.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **AutoencoderKL.load_config(folder)}


def lora_config(rank: int, alpha: float, targets, lora_type: str = "lora"):
    # every type starts as a no-op (Gaussian A, zero B for LoRA: diffusers' train_text_to_image_lora_sdxl.py)
    return peft_config(lora_type, rank, alpha, targets)


def unet_targets(config: TrainConfig) -> tuple[str, ...]:
    """The preset's modules; LoCon adds the conv preset's (kohya's conv_dim set)."""
    targets = TARGET_PRESETS[config.lora_targets]
    if config.lora_type == "locon":
        targets = tuple(dict.fromkeys(targets + TARGET_PRESETS["conv"]))
    return targets


def add_lora(model: TrainModel, config: TrainConfig) -> None:
    """Inject LoRA into the UNet (and CLIP text encoders when asked); adapters in fp32."""
    import torch

    model.unet.add_adapter(lora_config(config.lora_rank, config.lora_alpha, unet_targets(config), config.lora_type))
    if config.train_text_encoder:
        if not model.family.lora_text_encoders:  # a detected family the config could not check
            from loraflow.errors import ConfigError

            raise ConfigError(f"train_text_encoder: {model.family.text_encoder_note}")
        from peft import inject_adapter_in_model

        for name in model.family.lora_text_encoders:
            encoder = getattr(model.pipe, name)
            # peft directly: transformers' `add_adapter` insists on a newer peft than diffusers needs
            te_config = lora_config(config.lora_rank, config.lora_alpha,
                                    TEXT_ENCODER_PRESETS[config.text_encoder_targets], config.lora_type)
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
