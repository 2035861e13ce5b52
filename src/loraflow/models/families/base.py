"""The adapter interface every model family implements: everything loraflow knows that differs
from one family to the next is a class attribute or classmethod here, overridden in the family's
file (see the package docstring for how to add one).

SDXL (two CLIP encoders), Kolors (ChatGLM) and SD1.5 differ mainly in how a prompt becomes
embeddings and in micro-conditioning; the UNet, VAE, noise schedule, LoRA, training loop and
samplers are shared. This module stays torch-free (`loraflow --help` imports it); heavy imports
happen inside the classmethods that need them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from loraflow.errors import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"  # shipped configs, one folder per family
# Key prefixes of original (CompVis LDM / Stability SGM) single-file checkpoints, shared by all families.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
TINY_TEXT_DIM = 32  # hidden size of every tiny test text encoder


@dataclass(frozen=True)
class FamilyDefaults:
    guidance_scale: float
    num_inference_steps: int
    height: int
    width: int


@dataclass(frozen=True)
class IPAdapterLayout:
    """Where a family's IP-Adapter weights and their CLIP image encoder lie in the folders people
    download (the hub repository's layout), so `--ip-adapter FOLDER` finds them."""

    hub_id: str  # where the files come from (said when they are missing)
    weight_names: tuple[str, ...]  # adapter files relative to the folder, in order of preference
    image_encoders: tuple[str, ...]  # image encoder folders relative to the folder, in order of preference
    image_encoder_title: str  # what the encoder is, in messages ("CLIP ViT-L/14-336")


@dataclass
class PromptEmbeds:
    """Text conditioning of one prompt (batch size 1)."""

    embeds: Any  # (1, L, D) hidden states fed to the UNet's cross-attention
    pooled: Any = None  # (1, P) pooled embedding for SDXL-class micro-conditioning, else None

    def to(self, device=None, dtype=None) -> "PromptEmbeds":
        return PromptEmbeds(
            self.embeds.to(device=device, dtype=dtype),
            None if self.pooled is None else self.pooled.to(device=device, dtype=dtype),
        )


class ModelFamily:
    # ---- identity -----------------------------------------------------------------------
    name: ClassVar[str]  # registry key, `--family` value, `tiny:<name>`
    title: ClassVar[str]  # in messages ("SDXL")
    # False: recognised only so that errors can say what a file is (SD 2.x); never loaded.
    supported: ClassVar[bool] = True
    # Another family whose UNet block layout this one shares (Kolors: SDXL's). LoRA key names
    # cannot tell the two apart, so a LoRA that looks like `unet_like` fits this family too.
    unet_like: ClassVar[str | None] = None

    # ---- pipelines ----------------------------------------------------------------------
    pipeline_class_name: ClassVar[str]
    img2img_class_name: ClassVar[str | None] = None
    inpaint_class_name: ClassVar[str | None] = None
    # diffusers ControlNet pipelines by task ("text2img" | "img2img" | "inpaint"); none = unsupported
    controlnet_class_names: ClassVar[dict[str, str]] = {}
    # Pipeline classes of another family that this one runs with precomputed embeddings: they are
    # built without text encoders/tokenizers (Kolors borrows SDXL's, same UNet layout).
    borrowed_class_names: ClassVar[tuple[str, ...]] = ()
    # Pipeline arguments loraflow never has a component for (SD1.5's safety checker): passed when
    # a pipeline is assembled from parts (single-file and tiny models).
    pipeline_extras: ClassVar[dict[str, Any]] = {}
    text_encoder_names: ClassVar[tuple[str, ...]]  # pipeline attributes holding text encoders
    defaults: ClassVar[FamilyDefaults]
    # Noise schedule of the base model's training (diffusers scheduler config keys).
    schedule: ClassVar[dict[str, Any]]
    uses_time_ids: ClassVar[bool] = False  # SDXL-class micro-conditioning
    prompt_tokens: ClassVar[int] = 77  # tokens per prompt the UNet cross-attends to (one CLIP chunk)
    where_to_get: ClassVar[str] = ""  # shown when weights are missing
    ip_adapter: ClassVar[IPAdapterLayout | None] = None  # reference images (models/ip_adapter.py); None: none

    # ---- latents ------------------------------------------------------------------------
    vae_scaling_factor: ClassVar[float]  # the real VAE's `scaling_factor` (latents to unit variance)
    vae_force_upcast: ClassVar[bool] = False  # the real VAE overflows in fp16 (diffusers `force_upcast`)
    # Folder under models/configs/ whose vae/config.json describes this family's VAE; a lone
    # `--vae FILE` has no config of its own.
    vae_config_folder: ClassVar[str]
    # Approximate linear latent -> RGB map for cheap previews, (4 latent channels, 3) plus bias
    # (ComfyUI `comfy/latent_formats.py`); None: previews stretch the raw channels instead.
    latent_rgb_factors: ClassVar[tuple[tuple[float, float, float], ...] | None] = None
    latent_rgb_bias: ClassVar[tuple[float, float, float]] = (0.0, 0.0, 0.0)

    # ---- detection ----------------------------------------------------------------------
    cross_attention_dim: ClassVar[int | None] = None  # width of the text embeddings the UNet attends to
    # Key prefixes in an original single-file checkpoint that only this family has (its text encoders).
    checkpoint_markers: ClassVar[tuple[str, ...]] = ()

    # ---- single-file checkpoints (A1111 / Civitai) --------------------------------------
    # component -> (key prefix in the original checkpoint, what it is), in loading order;
    # empty: single files of this family are not supported.
    single_file_layout: ClassVar[dict[str, tuple[str, str]]] = {}
    single_file_tokenizers: ClassVar[tuple[str, ...]] = ()  # tokenizer folders of the shipped configs

    # ---- LoRA files ---------------------------------------------------------------------
    kohya_sgm_unet: ClassVar[bool] = False  # kohya writes this UNet with Stability SGM block names
    # Text encoders LoRA may train, each with its kohya key prefix (sd-scripts `networks/lora.py`).
    lora_text_encoders: ClassVar[dict[str, str]] = {}
    text_encoder_note: ClassVar[str] = ""  # why other text encoders take no LoRA (said in errors)
    # kohya `ss_base_model_version` and SAI `modelspec.architecture` / `.implementation` written
    # into trained LoRAs (sd-scripts `library/sai_model_spec.py`).
    ss_base_model_version: ClassVar[str] = ""
    modelspec_architecture: ClassVar[str] = ""
    modelspec_implementation: ClassVar[str] = ""
    # How a LoRA file's metadata names this family: prefixes of those two fields (kohya spells
    # versions of one family differently, "sdxl_base_v1-0", "sdxl_refiner_v1-0").
    metadata_prefixes: ClassVar[tuple[str, str] | None] = None
    # What a LoRA without metadata shows: components only this family's LoRAs hold, and a regex
    # matching UNet module names (diffusers layout) only this family's UNet has.
    lora_components: ClassVar[tuple[str, ...]] = ()
    lora_module_pattern: ClassVar[str | None] = None

    # ---- tiny test model (models/tiny.py) -----------------------------------------------
    tiny_unet: ClassVar[dict[str, Any]] = {}  # UNet2DConditionModel arguments beyond the shared ones

    # ---- components ---------------------------------------------------------------------
    @classmethod
    def pipeline_class(cls, task: str = "text2img"):
        import diffusers

        name = {"text2img": cls.pipeline_class_name, "img2img": cls.img2img_class_name,
                "inpaint": cls.inpaint_class_name}[task]
        if name is None:
            raise ConfigError(f"{cls.name} has no {task} pipeline in diffusers")
        return getattr(diffusers, name)

    @classmethod
    def default_scheduler(cls):
        """The scheduler the family ships with (Euler discrete for all three here)."""
        from diffusers import EulerDiscreteScheduler

        return EulerDiscreteScheduler(**cls.schedule)

    @classmethod
    def noise_scheduler(cls):
        """The training-time noise schedule (DDPM over the same betas)."""
        from diffusers import DDPMScheduler

        keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")
        return DDPMScheduler(**{k: cls.schedule[k] for k in keys if k in cls.schedule})

    @classmethod
    def folder_components(cls, path: Path, torch_dtype, use_safetensors: bool | None,
                          skip: tuple[str, ...]) -> dict[str, Any]:
        """Components of a diffusers folder that `from_pretrained` cannot load by itself (custom
        code), loaded here; the rest is diffusers' job. `skip`: components not to load."""
        return {}

    @classmethod
    def config_dir(cls) -> Path:
        """The shipped configs of the family's real base model (single-file loading)."""
        return CONFIG_ROOT / cls.name

    @classmethod
    def tiny_text_components(cls, seed: int, workdir: Path) -> dict[str, Any]:
        """Tokenizers and text encoders of the tiny test model, deterministic for `seed`."""
        raise NotImplementedError(f"{cls.name} has no tiny test model")

    # ---- conditioning -------------------------------------------------------------------
    @classmethod
    def encode_prompts(cls, pipe, prompts: list[str]) -> list[PromptEmbeds]:
        """Weighted A1111-syntax prompts -> one `PromptEmbeds` each, all with the same length L
        (so positive and negative prompts can be batched for classifier-free guidance)."""
        raise NotImplementedError

    @classmethod
    def time_ids(cls, original_size, crop_top_left, target_size):
        """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
        return list(original_size) + list(crop_top_left) + list(target_size)

    @classmethod
    def call_kwargs(cls, positive: PromptEmbeds, negative: PromptEmbeds) -> dict[str, Any]:
        """Keyword arguments that hand precomputed embeddings to the diffusers pipeline."""
        kwargs = {"prompt_embeds": positive.embeds, "negative_prompt_embeds": negative.embeds}
        if positive.pooled is not None:
            kwargs["pooled_prompt_embeds"] = positive.pooled
            kwargs["negative_pooled_prompt_embeds"] = negative.pooled
        return kwargs

    # ---- detection ----------------------------------------------------------------------
    @classmethod
    def matches_folder(cls, model_index: dict, config: Callable[[str], dict]) -> bool:
        """Whether a diffusers folder is of this family by what it declares: `model_index` is its
        model_index.json, `config(component)` a component's config.json ({} when absent)."""
        return model_index.get("_class_name", "").startswith(cls.pipeline_class_name)

    @classmethod
    def matches_unet_config(cls, unet: dict) -> bool:
        """Fallback when no family claims a folder by its model index: the UNet's config alone."""
        return False

    @classmethod
    def matches_checkpoint(cls, shapes: dict[str, tuple[int, ...]]) -> bool:
        """Whether an original-layout checkpoint (key -> shape) holds this family's text encoders."""
        return any(k.startswith(cls.checkpoint_markers) for k in shapes) if cls.checkpoint_markers else False

    @classmethod
    def checkpoint_refusal(cls, shapes: dict[str, tuple[int, ...]]) -> str | None:
        """What a checkpoint of this family's kind is when loraflow cannot use it ("an SDXL
        refiner checkpoint, ..."); None when that does not apply."""
        return None

    @classmethod
    def matches_metadata(cls, metadata: dict[str, str]) -> bool:
        """Whether a LoRA file's `ss_*` / `modelspec.*` metadata says it is for this family."""
        if cls.metadata_prefixes is None:
            return False
        base, arch = cls.metadata_prefixes
        return metadata.get("ss_base_model_version", "").startswith(base) or \
            metadata.get("modelspec.architecture", "").startswith(arch)

    @classmethod
    def matches_lora_modules(cls, components: list[str], unet_modules: list[str]) -> bool:
        """Whether a LoRA's components / UNet module names (diffusers layout) show this family."""
        if any(c in components for c in cls.lora_components):
            return True
        pattern = cls.lora_module_pattern
        return pattern is not None and any(re.search(pattern, m) for m in unet_modules)
