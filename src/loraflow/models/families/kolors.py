"""Kolors (Kwai): SDXL-architecture UNet conditioned on ChatGLM3-6B. Penultimate hidden state of a
256-token window, pooled = final layer at the last position (diffusers `KolorsPipeline.encode_prompt`)."""
from __future__ import annotations

import json

from loraflow.models.families.base import TINY_TEXT_DIM, FamilyDefaults, IPAdapterLayout, ModelFamily, PromptEmbeds
from loraflow.models.families.sdxl import SDXL
from loraflow.models.prompt_encoding import encode_chatglm
from loraflow.models.tiny_text_encoders import chatglm_text_encoder
from loraflow.models.tiny_tokenizers import build_chatglm_tokenizer

MAX_SEQUENCE_LENGTH = 256


class Kolors(ModelFamily):
    name = "kolors"
    title = "Kolors"
    unet_like = SDXL.name  # SDXL's UNet blocks; its LoRAs use SGM names (ComfyUI reads them with SDXL's key map)
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
    # Kwai-Kolors/Kolors-IP-Adapter-Plus: a Resampler adapter with its own CLIP ViT-L/14 at 336 px in
    # image_encoder/ (the safetensors copy of the weights is on the hub's refs/pr/4)
    ip_adapter = IPAdapterLayout(
        hub_id="Kwai-Kolors/Kolors-IP-Adapter-Plus",
        weight_names=("ip_adapter_plus_general.safetensors", "ip_adapter_plus_general.bin"),
        image_encoders=("image_encoder",),
        image_encoder_title="CLIP ViT-L/14-336",
    )
    where_to_get = "the diffusers folder of Kwai-Kolors/Kolors-diffusers (`loraflow models download Kwai-Kolors/Kolors-diffusers`)"

    # Kolors ships SDXL's VAE (Kwai-Kolors/Kolors-diffusers vae/config.json)
    vae_scaling_factor = SDXL.vae_scaling_factor
    vae_force_upcast = SDXL.vae_force_upcast
    vae_config_folder = SDXL.vae_config_folder
    latent_rgb_factors = SDXL.latent_rgb_factors
    latent_rgb_bias = SDXL.latent_rgb_bias
    cross_attention_dim = SDXL.cross_attention_dim  # ChatGLM's 4096 are projected to it (`text_proj`)

    # No kohya/SAI ids exist for Kolors: "kolors" and "kwai-kolors-v1" are ours; SGM names, hence sgm.
    kohya_sgm_unet = True
    text_encoder_note = ("Kolors' text encoder is ChatGLM, which loraflow does not put LoRA on; "
                         "a Kolors LoRA may only hold UNet weights")
    ss_base_model_version = "kolors"
    modelspec_architecture = "kwai-kolors-v1/lora"
    modelspec_implementation = SDXL.modelspec_implementation

    # SDXL's tiny UNet with the ChatGLM hidden states (4096 in the real model) projected to cross_attention_dim.
    tiny_unet = dict(SDXL.tiny_unet, encoder_hid_dim_type="text_proj", encoder_hid_dim=TINY_TEXT_DIM)

    @classmethod
    def matches_folder(cls, model_index, config):
        # also catches Kwai-Kolors/Kolors, whose model_index names the SDXL pipeline
        return "chatglm" in json.dumps(config("text_encoder")).lower() or super().matches_folder(model_index, config)

    @classmethod
    def matches_unet_config(cls, unet):
        return unet.get("encoder_hid_dim_type") == "text_proj"

    @classmethod
    def matches_metadata(cls, metadata):
        return metadata.get("ss_base_model_version") == cls.ss_base_model_version or \
            "kolors" in metadata.get("modelspec.architecture", "")

    @classmethod
    def folder_components(cls, path, torch_dtype, use_safetensors, skip):
        # The original Kolors repo names the SDXL pipeline and ships ChatGLM as custom code, which
        # `from_pretrained` will not run: load tokenizer and encoder with diffusers' copies.
        from diffusers.pipelines.kolors import ChatGLMTokenizer
        from diffusers.pipelines.kolors.text_encoder import ChatGLMModel

        tok_dir = path / "tokenizer" if (path / "tokenizer").is_dir() else path / "text_encoder"
        loaded = {"tokenizer": ChatGLMTokenizer.from_pretrained(tok_dir)}
        if "text_encoder" not in skip:
            loaded["text_encoder"] = ChatGLMModel.from_pretrained(
                path / "text_encoder", torch_dtype=torch_dtype, use_safetensors=use_safetensors)
        return loaded

    @classmethod
    def tiny_text_components(cls, seed, workdir):
        import torch

        tok = build_chatglm_tokenizer(workdir / "tokenizer")
        torch.manual_seed(seed)
        return dict(tokenizer=tok, text_encoder=chatglm_text_encoder(TINY_TEXT_DIM, tok.vocab_size))

    @classmethod
    def encode_prompts(cls, pipe, prompts):
        return [PromptEmbeds(*encode_chatglm(pipe.tokenizer, pipe.text_encoder, p, MAX_SEQUENCE_LENGTH)) for p in prompts]
