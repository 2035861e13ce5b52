"""Stable Diffusion 1.5: one CLIP ViT-L text encoder (last hidden state), 512x512, no micro-conditioning."""
from __future__ import annotations

from loraflow.models.families.base import FamilyDefaults, ModelFamily, PromptEmbeds


class SD15(ModelFamily):
    name = "sd15"
    pipeline_class_name = "StableDiffusionPipeline"
    img2img_class_name = "StableDiffusionImg2ImgPipeline"
    inpaint_class_name = "StableDiffusionInpaintPipeline"
    controlnet_class_names = {"text2img": "StableDiffusionControlNetPipeline",
                              "img2img": "StableDiffusionControlNetImg2ImgPipeline",
                              "inpaint": "StableDiffusionControlNetInpaintPipeline"}
    text_encoder_names = ("text_encoder",)
    defaults = FamilyDefaults(guidance_scale=7.5, num_inference_steps=30, height=512, width=512)
    # runwayml/stable-diffusion-v1-5 scheduler_config.json (betas of the original LDM training)
    schedule = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    )
    where_to_get = "e.g. a diffusers folder of stable-diffusion-v1-5, or a single .safetensors checkpoint from Civitai"

    @classmethod
    def encode_prompts(cls, pipe, prompts):
        from loraflow.models.prompt_encoding import clip_chunk_count, encode_clip

        tokens, n_chunks = clip_chunk_count(pipe.tokenizer, prompts)
        return [PromptEmbeds(encode_clip(pipe.tokenizer, pipe.text_encoder, t, n_chunks, None)[0]) for t in tokens]
