"""SDXL: two CLIP encoders (ViT-L + OpenCLIP bigG), penultimate hidden states concatenated,
pooled bigG embedding and size/crop time ids as micro-conditioning (SDXL paper, section 2.2)."""
from __future__ import annotations

from loraflow.models.families.base import (
    LDM_UNET, LDM_VAE, TINY_TEXT_DIM, FamilyDefaults, IPAdapterLayout, ModelFamily, PromptEmbeds,
)
from loraflow.models.prompt_encoding import clip_chunk_count, encode_clip
from loraflow.models.tiny_text_encoders import clip_text_encoder
from loraflow.models.tiny_tokenizers import build_clip_tokenizer

# Stability SGM checkpoint keys of the two text encoders
CLIP_L = "conditioner.embedders.0.transformer."  # HF CLIPTextModel, ViT-L/14
OPENCLIP_G = "conditioner.embedders.1.model."  # OpenCLIP ViT-bigG/14, fused qkv
REFINER_OPENCLIP_G = "conditioner.embedders.0.model."  # the refiner has only bigG, as embedder 0
TINY_TIME_EMBED_DIM = 8  # the real addition_time_embed_dim is 256; 6 time ids each get this many channels


class SDXL(ModelFamily):
    name = "sdxl"
    title = "SDXL"
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
    # h94/IP-Adapter: sdxl_models/ip-adapter_sdxl.* use OpenCLIP ViT-bigG (sdxl_models/image_encoder),
    # the *_vit-h ones ViT-H (models/image_encoder); models/ip_adapter.py picks the encoder whose width fits.
    ip_adapter = IPAdapterLayout(
        hub_id="h94/IP-Adapter",
        weight_names=("sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
                      "sdxl_models/ip-adapter_sdxl_vit-h.safetensors", "sdxl_models/ip-adapter_sdxl.safetensors"),
        image_encoders=("image_encoder", "sdxl_models/image_encoder", "models/image_encoder"),
        image_encoder_title="CLIP ViT-H/14 (models/image_encoder) or ViT-bigG/14 (sdxl_models/image_encoder)",
    )

    vae_scaling_factor = 0.13025
    vae_force_upcast = True
    vae_config_folder = "sdxl"
    # ComfyUI comfy/latent_formats.py `SDXL.latent_rgb_factors` / `latent_rgb_factors_bias`
    latent_rgb_factors = ((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068),
                          (0.1076, 0.1111, -0.0362), (-0.3165, -0.2492, -0.2188))
    latent_rgb_bias = (0.1084, -0.0175, -0.0011)

    cross_attention_dim = 2048
    checkpoint_markers = (OPENCLIP_G, CLIP_L)
    single_file_layout = {
        "unet": (LDM_UNET, "UNet"),
        "vae": (LDM_VAE, "VAE"),
        "text_encoder": (CLIP_L, "CLIP ViT-L text encoder"),
        "text_encoder_2": (OPENCLIP_G, "OpenCLIP bigG text encoder"),
    }
    single_file_tokenizers = ("tokenizer", "tokenizer_2")

    # kohya-ss trains SDXL on its copy of Stability's SGM UNet (sd-scripts `library/sdxl_original_unet.py`)
    kohya_sgm_unet = True
    lora_text_encoders = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    ss_base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    metadata_prefixes = ("sdxl", "stable-diffusion-xl")
    lora_components = ("text_encoder_2",)
    lora_module_pattern = r"\.transformer_blocks\.1\."  # 2+ transformer layers in the deepest blocks; SD1/2 never

    # Three levels (DownBlock2D then two cross-attention levels, 2 layers each), so SGM names map 1:1.
    tiny_unet = dict(
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TINY_TIME_EMBED_DIM,
        # pooled text embedding + 6 time ids (original size, crop top-left, target size)
        projection_class_embeddings_input_dim=TINY_TEXT_DIM + 6 * TINY_TIME_EMBED_DIM,
        cross_attention_dim=2 * TINY_TEXT_DIM,  # the two encoders' hidden states, concatenated
    )

    @classmethod
    def matches_unet_config(cls, unet):
        return unet.get("addition_embed_type") == "text_time"

    @classmethod
    def checkpoint_refusal(cls, shapes):
        if any(k.startswith(REFINER_OPENCLIP_G) for k in shapes) and not any(k.startswith(OPENCLIP_G) for k in shapes):
            return "an SDXL refiner checkpoint, which is not supported; use an SDXL base model"
        return None

    @classmethod
    def tiny_text_components(cls, seed, workdir):
        import torch

        tok = build_clip_tokenizer(workdir / "tokenizer")
        torch.manual_seed(seed)
        text_encoder = clip_text_encoder(TINY_TEXT_DIM, False, len(tok))
        torch.manual_seed(seed + 1)
        text_encoder_2 = clip_text_encoder(TINY_TEXT_DIM, True, len(tok))
        return dict(tokenizer=tok, text_encoder=text_encoder, tokenizer_2=tok, text_encoder_2=text_encoder_2)

    @classmethod
    def encode_prompts(cls, pipe, prompts):
        import torch

        tokens_1, n1 = clip_chunk_count(pipe.tokenizer, prompts)
        tokens_2, n2 = clip_chunk_count(pipe.tokenizer_2, prompts)
        n_chunks = max(n1, n2)
        result = []
        for t1, t2 in zip(tokens_1, tokens_2):
            h1, _ = encode_clip(pipe.tokenizer, pipe.text_encoder, t1, n_chunks, -2)
            h2, pooled = encode_clip(pipe.tokenizer_2, pipe.text_encoder_2, t2, n_chunks, -2)
            result.append(PromptEmbeds(torch.cat([h1, h2], dim=-1), pooled))
        return result
