"""Kolors (Kwai): SDXL-architecture UNet conditioned on ChatGLM3-6B. Penultimate hidden state of a
256-token window, pooled = final layer at the last position (diffusers `KolorsPipeline.encode_prompt`)."""
from __future__ import annotations

from loraflow.models.families.base import FamilyDefaults, ModelFamily, PromptEmbeds

MAX_SEQUENCE_LENGTH = 256


class Kolors(ModelFamily):
    name = "kolors"
    pipeline_class_name = "KolorsPipeline"
    # SDXL's, not KolorsImg2ImgPipeline: diffusers 0.42's drops `pooled_prompt_embeds` before its
    # encode_prompt, so it fails with precomputed (A1111-weighted) embeddings.
    img2img_class_name = "StableDiffusionXLImg2ImgPipeline"
    # diffusers has no Kolors inpainting or ControlNet pipeline (the ControlNet one is only a
    # community example). Kolors is SDXL's UNet with ChatGLM text: SDXL's pipelines run it when
    # given the ChatGLM embeddings; the ControlNet projects them itself (generate/control/model.py).
    inpaint_class_name = "StableDiffusionXLInpaintPipeline"
    controlnet_class_names = {"text2img": "StableDiffusionXLControlNetPipeline",
                              "img2img": "StableDiffusionXLControlNetImg2ImgPipeline",
                              "inpaint": "StableDiffusionXLControlNetInpaintPipeline"}
    borrowed_class_names = (img2img_class_name, inpaint_class_name, *controlnet_class_names.values())
    text_encoder_names = ("text_encoder",)
    defaults = FamilyDefaults(guidance_scale=5.0, num_inference_steps=50, height=1024, width=1024)
    # Kwai-Kolors/Kolors-diffusers scheduler/scheduler_config.json: 1100 train steps, betas to 0.014
    schedule = dict(
        num_train_timesteps=1100, beta_start=0.00085, beta_end=0.014, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
    )
    uses_time_ids = True
    prompt_tokens = MAX_SEQUENCE_LENGTH
    where_to_get = "the diffusers folder of Kwai-Kolors/Kolors-diffusers (`loraflow models download Kwai-Kolors/Kolors-diffusers`)"

    @classmethod
    def encode_prompts(cls, pipe, prompts):
        from loraflow.models.prompt_encoding import encode_chatglm

        return [PromptEmbeds(*encode_chatglm(pipe.tokenizer, pipe.text_encoder, p, MAX_SEQUENCE_LENGTH)) for p in prompts]
