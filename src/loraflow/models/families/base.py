"""The adapter interface every model family implements.

SDXL (two CLIP encoders), Kolors (ChatGLM) and SD1.5 differ mainly in how a prompt becomes
embeddings and in micro-conditioning; the UNet, VAE, noise schedule, LoRA, training loop and
samplers are shared. A new family is one new file in this folder.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class FamilyDefaults:
    guidance_scale: float
    num_inference_steps: int
    height: int
    width: int


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
    name: ClassVar[str]
    pipeline_class_name: ClassVar[str]
    img2img_class_name: ClassVar[str | None] = None
    inpaint_class_name: ClassVar[str | None] = None
    # diffusers ControlNet pipelines by task ("text2img" | "img2img" | "inpaint"); none = unsupported
    controlnet_class_names: ClassVar[dict[str, str]] = {}
    # Pipeline classes of another family that this one runs with precomputed embeddings: they are
    # built without text encoders/tokenizers (Kolors borrows SDXL's, same UNet layout).
    borrowed_class_names: ClassVar[tuple[str, ...]] = ()
    text_encoder_names: ClassVar[tuple[str, ...]]  # pipeline attributes holding text encoders
    defaults: ClassVar[FamilyDefaults]
    # Noise schedule of the base model's training (diffusers scheduler config keys).
    schedule: ClassVar[dict[str, Any]]
    uses_time_ids: ClassVar[bool] = False  # SDXL-class micro-conditioning
    prompt_tokens: ClassVar[int] = 77  # tokens per prompt the UNet cross-attends to (one CLIP chunk)
    where_to_get: ClassVar[str] = ""  # shown when weights are missing

    # ---- components ---------------------------------------------------------------------
    @classmethod
    def pipeline_class(cls, task: str = "text2img"):
        import diffusers

        name = {"text2img": cls.pipeline_class_name, "img2img": cls.img2img_class_name,
                "inpaint": cls.inpaint_class_name}[task]
        if name is None:
            from loraflow.errors import ConfigError

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
    def matches_model_index(cls, model_index: dict) -> bool:
        return model_index.get("_class_name", "").startswith(cls.pipeline_class_name)
