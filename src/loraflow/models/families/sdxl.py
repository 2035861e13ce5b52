"""SDXL: two CLIP encoders (ViT-L + OpenCLIP bigG), penultimate hidden states concatenated,
pooled bigG embedding and size/crop time ids as micro-conditioning (SDXL paper, section 2.2)."""
from __future__ import annotations

from loraflow.models.families.base import FamilyDefaults, ModelFamily, PromptEmbeds


class SDXL(ModelFamily):
    name = "sdxl"
    pipeline_class_name = "StableDiffusionXLPipeline"
    img2img_class_name = "StableDiffusionXLImg2ImgPipeline"
    inpaint_class_name = "StableDiffusionXLInpaintPipeline"
    controlnet_class_names = {"text2img": "StableDiffusionXLControlNetPipeline",
                              "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                              "inpaint": "StableDiffusionXLControlNetInpaintPipeline"}
    text_encoder_names = ("text_encoder", "text_encoder_2")
    defaults = FamilyDefaults(guidance_scale=5.0, num_inference_steps=30, height=1024, width=1024)
    # stabilityai/stable-diffusion-xl-base-1.0 scheduler_config.json
    schedule = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    )
    uses_time_ids = True
    where_to_get = "e.g. a diffusers folder of stable-diffusion-xl-base-1.0, or a single .safetensors checkpoint"

    @classmethod
    def encode_prompts(cls, pipe, prompts):
        import torch

        from loraflow.models.prompt_encoding import clip_chunk_count, encode_clip

        tokens_1, n1 = clip_chunk_count(pipe.tokenizer, prompts)
        tokens_2, n2 = clip_chunk_count(pipe.tokenizer_2, prompts)
        n_chunks = max(n1, n2)
        result = []
        for t1, t2 in zip(tokens_1, tokens_2):
            h1, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, t1, n_chunks, -2)
            h2, pooled = encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, t2, n_chunks, -2)
            result.append(PromptEmbeds(torch.cat([h1, h2], dim=-1), pooled))
        return result
