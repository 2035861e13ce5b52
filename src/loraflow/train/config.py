"""`TrainConfig`: every option of `loraflow train`, described once.

The YAML file, the CLI flags (`--lora-rank`) and the Python API all fill this one model.
DiffSynth-Studio's `train_kolors_lora.py` names used by the tutorial (`dataset_path`,
`output_path`, `max_epochs`, `precision: 16-mixed`, `use_gradient_checkpointing`, ...) are
accepted as aliases and converted here, at the edge.
This module stays light (no torch): `loraflow --help` imports it.
"""
from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from loraflow.config import Options, opt
from loraflow.models.families import FAMILIES, TINY_MODELS, FamilyName, get_family
from loraflow.errors import ConfigError

# Named sets of UNet modules LoRA is put on (diffusers module-name suffixes), so nobody has to list
# hundreds of module names; the names are the `lora_targets` choices. `attn` is what the tutorial
# (DiffSynth) and diffusers train.
TARGET_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "attn+ff": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"),
    # every Linear inside the transformer blocks plus their proj_in/proj_out (kohya's default `networks.lora`)
    "all-linear": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"),
    # all-linear plus what kohya's `conv_dim` adds (sd-scripts networks/lora.py: every Conv2d / Linear in
    # ResnetBlock2D, Downsample2D, Upsample2D): ResNet convs, their time-embedding projections, samplers
    "conv": ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out",
             "conv1", "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv"),
}
# Text-encoder (CLIP) modules trained when `train_text_encoder` is on: attention (diffusers' choice), or
# attention + MLP (kohya's CLIPAttention + CLIPMLP; ComfyUI maps both).
TEXT_ENCODER_PRESETS: dict[str, tuple[str, ...]] = {
    "attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
    "attn+mlp": ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"),
}
TEXT_ENCODER_TARGETS = TEXT_ENCODER_PRESETS["attn"]

_PRECISION_ALIASES = {"16-mixed": "fp16", "bf16-mixed": "bf16", "32": "no", "32-true": "no", "fp32": "no",
                      "16": "fp16", "bf16-true": "bf16"}


class TrainConfig(Options):
    # ---- what to train ------------------------------------------------------------------
    model: str = opt(None, f"base model: diffusers folder, .safetensors checkpoint, {'|'.join(TINY_MODELS)}; "
                           "default: the built-in demo model",
                     aliases=("pretrained_model_name_or_path", "pretrained_path"))
    family: FamilyName | None = opt(None, "model family (detected from the model when not given)")
    vae: str | None = opt(None, "replacement VAE, e.g. sdxl-vae-fp16-fix (folder or .safetensors)",
                          aliases=("pretrained_fp16_vae_path", "pretrained_vae_model_name_or_path"))
    dataset: str = opt(None, "dataset: folder with train/metadata.csv, metadata.jsonl, kohya N_name/ folders, or the file itself",
                       aliases=("dataset_path", "train_data_dir"))
    output: str = opt("output/lora", "output folder (LoRA file, checkpoints, samples, config.yaml)",
                      aliases=("output_path", "output_dir"))
    name: str = opt("lora", "file name stem of the LoRA: OUTPUT/NAME.safetensors", aliases=("output_name",))
    # ---- LoRA ---------------------------------------------------------------------------
    lora_rank: int = opt(16, "LoRA rank (dimension of the low-rank update)", aliases=("rank", "network_dim"), ge=1)
    lora_alpha: float = opt(4.0, "LoRA alpha; the update is scaled by alpha/rank (stored in the file)",
                            aliases=("network_alpha",), gt=0)
    lora_targets: Literal["attn", "attn+ff", "all-linear", "conv"] = opt(
        "attn", "UNet modules LoRA trains: attn (to_q/k/v/out, as the tutorial) | attn+ff | all-linear | conv (+ResNet convs)")
    train_text_encoder: bool = opt(False, "also put LoRA on the text encoder(s) ("
                                   + ", ".join(f.title for f in FAMILIES.values() if f.lora_text_encoders) + " only)")
    text_encoder_targets: Literal["attn", "attn+mlp"] = opt(
        "attn", "text-encoder modules: attn (q/k/v/out_proj) | attn+mlp (+fc1/fc2, as kohya)")
    lora_type: Literal["lora", "locon", "loha", "lokr", "dora"] = opt(
        "lora", "adapter: lora | locon (lora + the conv preset's convs) | loha | lokr | dora (peft's "
                "LoHa/LoKr/DoRA, saved with the LyCORIS keys ComfyUI and A1111 load)", aliases=("algo",))
    # ---- data ---------------------------------------------------------------------------
    resolution: int | None = opt(None, "training resolution; buckets keep area <= resolution^2 "
                                       "(default: the model's native size: 1024 SDXL/Kolors, 512 SD1.5, 64 demo)", ge=64)
    center_crop: bool = opt(True, "center crop to the bucket (--no-center-crop / --random-crop: random crop)")
    random_crop: bool = opt(False, "random crop to the bucket (disables latent caching)")
    random_flip: bool = opt(False, "flip half of the images horizontally (latents cached per flip variant)")
    bucketing: bool = opt(True, "aspect-ratio bucketing (kohya style); off: every image goes to the square bucket")
    bucket_step: int = opt(64, "bucket sides are multiples of this", ge=8)
    max_upscale: float = opt(2.0, "an image is never upscaled more than this to fill a bucket (smaller bucket instead)", gt=0)
    caption_prefix: str = opt("", "text put before every caption, e.g. the trigger word 'sks style, '",
                              aliases=("trigger_word",))
    caption_dropout: float = opt(0.0, "probability of training on an empty caption", aliases=("caption_dropout_rate",),
                                 ge=0.0, le=1.0)
    shuffle_caption: bool = opt(False, "shuffle the caption's tags (split on caption_separator) at every sighting")
    keep_tokens: int = opt(0, "leading tags that shuffling and tag dropout leave in place", ge=0)
    caption_separator: str = opt(",", "what a caption's tags are split on", min_length=1)
    tag_dropout: float = opt(0.0, "probability of dropping each tag (after keep_tokens) at a sighting",
                             aliases=("caption_tag_dropout_rate",), ge=0.0, le=1.0)
    caption_variants: int = opt(8, "with cached text embeddings: augmented versions cached per caption, used in turn",
                                ge=1)
    masked_loss: bool = opt(False, "weight the loss by a mask per image: the mask column, NAME_mask.png beside the "
                                   "image, or its alpha channel (see README)", aliases=("alpha_mask",))
    mask_column: str = opt("mask", "metadata column holding a mask image path (relative to the metadata file)",
                           min_length=1)
    reg_dataset: str | None = opt(None, "regularization (class) images with their own captions, mixed into the "
                                        "batches: by default one reg image per training image each epoch (kohya)",
                                  aliases=("reg_data_dir",))
    reg_weight: float = opt(1.0, "loss weight of regularization images", aliases=("prior_loss_weight",), ge=0.0)
    reg_repeats: int | None = opt(None, "sightings of each regularization image per epoch "
                                        "(default: as many reg images as training images in total)", ge=1)
    cache_latents: bool = opt(True, "cache VAE latents on disk, keyed by image hash + settings")
    cache_text_embeds: bool = opt(True, "cache text embeddings on disk (off when the text encoder trains)")
    cache_dir: str | None = opt(None, "cache folder (default: ~/.cache/loraflow/train)")
    # ---- optimisation -------------------------------------------------------------------
    batch_size: int = opt(1, "images per step per process", aliases=("train_batch_size",), ge=1)
    gradient_accumulation: int = opt(1, "micro-batches per optimizer step", aliases=("gradient_accumulation_steps", "accumulate_grad_batches"), ge=1)
    learning_rate: float = opt(1e-4, "peak learning rate", aliases=("lr",), gt=0)
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                          "polynomial"] = opt("constant", "learning-rate schedule (diffusers.optimization)")
    lr_warmup_steps: int = opt(0, "linear warm-up steps", ge=0)
    optimizer: Literal["adamw", "adamw8bit", "prodigy"] = opt("adamw", "adamw (fused where available) | adamw8bit (bitsandbytes) | prodigy (prodigyopt)")
    weight_decay: float = opt(1e-2, "AdamW weight decay", ge=0.0)
    max_grad_norm: float = opt(1.0, "gradient clipping norm (0: off)", ge=0.0)
    max_steps: int | None = opt(None, "optimizer steps (overrides epochs)", aliases=("max_train_steps", "steps"), ge=1)
    epochs: int = opt(1, "passes over the dataset (repeats included)", aliases=("max_epochs", "num_train_epochs"), ge=1)
    mixed_precision: str = opt("no", "no | fp16 | bf16 (DiffSynth's 16-mixed = fp16): frozen weights are stored in it, LoRA weights stay fp32",
                               aliases=("precision",))
    gradient_checkpointing: bool = opt(False, "recompute activations in backward to save memory",
                                       aliases=("use_gradient_checkpointing",))
    offload_activations: bool = opt(False, "keep what backward needs in pinned host memory until backward asks for "
                                           "it: with gradient_checkpointing the checkpointed blocks' inputs, without "
                                           "it every large activation (a copy out and back per step: slower, see "
                                           "`loraflow plan train`; CUDA only: elsewhere the host is the device)")
    seed: int = opt(0, "random seed: data order, crops, flips, noise, timesteps")
    # ---- device memory (`loraflow plan train` shows what each setting costs) ----------------
    base_fp8: bool = opt(False, "store the frozen UNet Linear/Conv weights in fp8 (e4m3) and compute each layer in "
                                "the mixed-precision dtype; needs fp16 or bf16")
    recompute: Literal["none", "ff", "ff+cross"] = opt(
        "none", "matmuls redone in backward to keep fewer activations, without gradient checkpointing: none | ff (the "
                "feed-forward projections) | ff+cross (and the cross-attentions); `loraflow plan train` shows the FLOPs")
    text_encoders_on_cpu: bool = opt(False, "keep the text encoders on the CPU: captions (and validation prompts) "
                                            "are encoded there once, into the cache")
    stream_text_encoders: bool | None = opt(None, "cache pass: bring the text encoders to the device one layer at a "
                                                   "time (accelerate cpu_offload) instead of whole; unset: on when, "
                                                   "whole, they would make the cache pass the run's peak (planned; "
                                                   "off on the CPU)")
    vram: float | None = opt(None, "device memory in GiB to plan for: picks the fastest set of gradient_checkpointing, "
                                   "offload_activations, recompute, base_fp8, adamw8bit, text_encoders_on_cpu that "
                                   "fits (auto on CUDA: free memory)", gt=0)
    # ---- objective ----------------------------------------------------------------------
    prediction_type: Literal["epsilon", "v_prediction"] | None = opt(None, "override the scheduler's prediction type")
    min_snr_gamma: float | None = opt(None, "min-SNR-gamma loss weighting (Hang et al. 2023); 5 is typical", gt=0)
    noise_offset: float = opt(0.0, "noise offset (Guttenberg 2023); 0.05-0.1 helps very dark/bright images", ge=0.0)
    # ---- EMA, held-out evaluation, early stop -------------------------------------------
    ema: bool = opt(False, "keep an exponential moving average of the LoRA weights: saved as NAME-ema.safetensors, "
                           "used for validation images", aliases=("use_ema",))
    ema_decay: float = opt(0.999, "EMA decay (ramped up from 0 as (1+t)/(10+t), diffusers EMAModel)", gt=0.0, lt=1.0)
    ema_warmup: int = opt(0, "optimizer steps before the EMA starts averaging (it copies the weights until then)", ge=0)
    ema_every: int = opt(1, "update the EMA every N optimizer steps", ge=1)
    eval_every: int | None = opt(None, "every N steps: loss on a held-out split at fixed timesteps and noise; "
                                       "the best step's LoRA is kept as NAME-best.safetensors", ge=1)
    eval_dataset: str | None = opt(None, "held-out dataset for eval_every (default: hold out eval_split of the dataset)")
    eval_split: float = opt(0.1, "fraction of the dataset held out (not trained on) when eval_every is set and "
                                 "eval_dataset is not; at least one image", gt=0.0, lt=1.0)
    eval_timesteps: int = opt(4, "fixed timesteps per held-out image, evenly spread over the noise schedule", ge=1)
    early_stop: int | None = opt(None, "stop when the held-out loss has not improved for K evaluations", ge=1)
    # ---- checkpoints, feedback, output --------------------------------------------------
    save_every: int | None = opt(None, "save a checkpoint every N steps (one is always saved at the end)",
                                 aliases=("checkpointing_steps",), ge=1)
    keep_checkpoints: int = opt(2, "keep only the last K checkpoints", aliases=("checkpoints_total_limit",), ge=1)
    resume: str | None = opt(None, "resume from 'latest' or a checkpoint folder", aliases=("resume_from_checkpoint",))
    validation_prompt: list[str] = opt([], "prompt for sample images (repeatable)", aliases=("validation_prompts",))
    validation_every: int | None = opt(None, "sample images every N steps (and at the end)", ge=1)
    validation_steps: int = opt(20, "inference steps for sample images", ge=1)
    validation_clip: str | None = opt(None, "local CLIP folder: log the sample images' mean CLIP score")
    validation_aesthetic: str | None = opt(None, "local aesthetic predictor: log the sample images' mean aesthetic score")
    log_every: int = opt(1, "log loss/lr every N steps", ge=1)
    save_format: Literal["kohya", "kohya+diffusers"] = opt("kohya", "kohya file (ComfyUI/A1111), optionally also the diffusers/peft file")
    save_dtype: Literal["float16", "bfloat16", "float32"] = opt("float16", "dtype of the saved LoRA weights")
    device: str = opt("auto", "auto | cpu | cuda (multi-GPU: `accelerate launch -m loraflow train ...`)", cli=True)

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _precision_alias(cls, value):
        """DiffSynth/Lightning spell precision `16-mixed`; we say `fp16`."""
        value = _PRECISION_ALIASES.get(str(value), str(value))
        if value not in ("no", "fp16", "bf16"):
            raise ValueError("choose one of: no, fp16, bf16 (or 16-mixed, bf16-mixed, 32)")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.random_crop and self.center_crop:
            # --random-crop wins over the default center crop
            object.__setattr__(self, "center_crop", False)
        if self.base_fp8 and self.mixed_precision == "no":
            raise ValueError("base_fp8: the fp8-stored weights are computed in fp16 or bf16; set mixed_precision")
        if self.text_encoders_on_cpu and self.train_text_encoder:
            raise ValueError("text_encoders_on_cpu: a text encoder that trains must be on the training device")
        if self.stream_text_encoders and (self.train_text_encoder or self.text_encoders_on_cpu
                                          or not self.cache_text_embeds):
            why = ("a text encoder that trains is on the device whole" if self.train_text_encoder else
                   "text_encoders_on_cpu keeps them off the device" if self.text_encoders_on_cpu else
                   "it streams the cache pass, and with cache_text_embeds off the encoders run every step")
            raise ValueError(f"stream_text_encoders: {why}; leave it unset")
        if self.early_stop and not self.eval_every:
            raise ValueError("early_stop needs eval_every (the held-out loss it watches)")
        family = get_family(self.family) if self.family else None  # None: detected when the model loads
        if self.train_text_encoder and family is not None and not family.lora_text_encoders:
            raise ValueError(f"train_text_encoder: {family.text_encoder_note}")
        if self.lora_type in ("loha", "lokr", "dora") and self.save_format != "kohya":
            raise ValueError(f"save_format '{self.save_format}': a {self.lora_type} has no diffusers/peft file "
                             "layout; use save_format kohya (ComfyUI, A1111 and loraflow read it)")
        return self

    def check_required(self) -> None:
        """Keys that have no sensible default, checked when a run starts (not on construction,
        so a partial config can be merged with flags)."""

        for key in ("dataset",):
            if not getattr(self, key):
                raise ConfigError(f"missing required key '{key}' (config file or --{key})")
