"""Stable Diffusion 1.5: one CLIP ViT-L text encoder (last hidden state), 512x512, no micro-conditioning."""
from __future__ import annotations

from loraflow.models.families.base import (
    LDM_UNET, LDM_VAE, TINY_TEXT_DIM, FamilyDefaults, IPAdapterLayout, ModelFamily, PromptEmbeds,
)
from loraflow.models.prompt_encoding import clip_chunk_count, encode_clip
from loraflow.models.tiny_text_encoders import clip_text_encoder
from loraflow.models.tiny_tokenizers import build_clip_tokenizer

CLIP_L = "cond_stage_model.transformer."  # CompVis LDM checkpoint: HF CLIPTextModel, ViT-L/14


class SD15(ModelFamily):
    name = "sd15"
    title = "SD1.5"
    pipeline_class_name = "StableDiffusionPipeline"
    img2img_class_name = "StableDiffusionImg2ImgPipeline"
    inpaint_class_name = "StableDiffusionInpaintPipeline"
    controlnet_class_names = {"text2img": "StableDiffusionControlNetPipeline",
                              "img2img": "StableDiffusionControlNetImg2ImgPipeline",
                              "inpaint": "StableDiffusionControlNetInpaintPipeline"}
    pipeline_extras = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    text_encoder_names = ("text_encoder",)
    defaults = FamilyDefaults(guidance_scale=7.5, num_inference_steps=30, height=512, width=512)
    # runwayml/stable-diffusion-v1-5 scheduler_config.json (betas of the original LDM training)
    schedule = dict(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading",
    )
    where_to_get = "e.g. a diffusers folder of stable-diffusion-v1-5, or a single .safetensors checkpoint from Civitai"
    ip_adapter = IPAdapterLayout(  # h94/IP-Adapter: models/, with OpenCLIP ViT-H/14 in models/image_encoder
        hub_id="h94/IP-Adapter",
        weight_names=("models/ip-adapter-plus_sd15.safetensors", "models/ip-adapter_sd15.safetensors"),
        image_encoders=("image_encoder", "models/image_encoder"),
        image_encoder_title="CLIP ViT-H/14",
    )

    vae_scaling_factor = 0.18215
    vae_config_folder = "sd15"
    # ComfyUI comfy/latent_formats.py `SD15.latent_rgb_factors`
    latent_rgb_factors = ((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350),
                          (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177))

    cross_attention_dim = 768
    checkpoint_markers = (CLIP_L,)
    single_file_layout = {
        "unet": (LDM_UNET, "UNet"),
        "vae": (LDM_VAE, "VAE"),
        "text_encoder": (CLIP_L, "CLIP ViT-L text encoder"),
    }
    single_file_tokenizers = ("tokenizer",)

    lora_text_encoders = {"text_encoder": "lora_te_"}
    text_encoder_note = "SD1.5 has one text encoder (text_encoder)"
    ss_base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    modelspec_implementation = "diffusers"
    metadata_prefixes = ("sd_v1", "stable-diffusion-v1")
    # SD1/2 have attention in the first down block and four levels; SDXL-class neither.
    lora_module_pattern = r"^(down_blocks\.0\.attentions|down_blocks\.3|up_blocks\.3\.attentions)"

    tiny_unet = dict(
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TINY_TEXT_DIM,
        attention_head_dim=4,
    )

    @classmethod
    def matches_unet_config(cls, unet):
        # the last resort of folder detection: any UNet with a cross-attention width
        return unet.get("cross_attention_dim") is None or isinstance(unet.get("cross_attention_dim"), int)

    @classmethod
    def tiny_text_components(cls, seed, workdir):
        import torch

        tok = build_clip_tokenizer(workdir / "tokenizer")
        torch.manual_seed(seed)
        return dict(tokenizer=tok, text_encoder=clip_text_encoder(TINY_TEXT_DIM, False, len(tok)))

    @classmethod
    def encode_prompts(cls, pipe, prompts):
        tokens, n_chunks = clip_chunk_count(pipe.tokenizer, prompts)
        return [PromptEmbeds(encode_clip(pipe.tokenizer, pipe.text_encoder, t, n_chunks, None)[0]) for t in tokens]
