"""The pieces of a run the plan executes on meta tensors: text encoding, VAE encode/decode, one
UNet call. Shapes come from the component configs; values do not matter on the meta device.

Prompt encoders are called the way `loraflow.models.prompt_encoding` calls them (CLIP: one
77-token window; ChatGLM: one left-padded window of the family's `prompt_tokens`), with token ids
made directly, since no tokenizer files are needed to know a window's length.
"""
from __future__ import annotations

import torch


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def largest_layer_bytes(module) -> int:
    """Bytes of the largest weights one submodule holds itself: what accelerate's sequential CPU offload
    (`cpu_offload`, one hook per module with parameters) has on the device at most."""
    return max(sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in module.modules())


def latent_shape(unet, vae_config_factor: int, batch: int, height: int, width: int) -> tuple[int, ...]:
    return (batch, unet.config.in_channels, height // vae_config_factor, width // vae_config_factor)


def encode_prompt(family, encoder, batch: int) -> None:
    """One prompt batch through `encoder` (no grad), as prompt_encoding does it."""
    device = next(encoder.parameters()).device
    with torch.no_grad():
        if hasattr(encoder.config, "padded_vocab_size"):  # ChatGLM: (L, B, D) hidden states
            ids = torch.zeros(batch, family.prompt_tokens, dtype=torch.long, device=device)
            out = encoder(input_ids=ids, position_ids=ids, output_hidden_states=True)
            embeds = out.hidden_states[-2].permute(1, 0, 2).clone()
            pooled = out.hidden_states[-1][-1, :, :].clone()
        else:  # CLIP
            ids = torch.zeros(batch, 77, dtype=torch.long, device=device)
            out = encoder(ids, output_hidden_states=True)
            embeds, pooled = out.hidden_states[-2], getattr(out, "text_embeds", None)
        del out
    return embeds, pooled


def conditioning(family, unet, batch: int, dtype, device="meta"):
    """The UNet's text inputs as the caches hand them over: (B, L, D) embeds, (B, P) pooled or None."""
    config = unet.config
    width = config.encoder_hid_dim if config.encoder_hid_dim_type == "text_proj" else config.cross_attention_dim
    embeds = torch.randn(batch, family.prompt_tokens, width, dtype=dtype, device=device)
    if not family.uses_time_ids:
        return embeds, None
    pooled_dim = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    return embeds, torch.randn(batch, pooled_dim, dtype=dtype, device=device)


def unet_kwargs(family, pooled, batch: int) -> dict:
    if not family.uses_time_ids:
        return {}
    time_ids = torch.full((batch, 6), 1024.0, dtype=torch.float32, device=pooled.device)
    return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


def vae_encode(vae, batch: int, height: int, width: int) -> None:
    """Posterior parameters of one image batch, as the latent cache computes them (no grad)."""
    param = next(vae.parameters())
    pixels = torch.empty(batch, 3, height, width, dtype=param.dtype, device=param.device)
    with torch.no_grad():
        params = vae.encode(pixels).latent_dist.parameters.float()
    return params


def vae_decode(vae, latents) -> None:
    param = next(vae.parameters())
    with torch.no_grad():
        return vae.decode(latents.to(param.dtype)).sample


def denoise_step(family, unet, latents, embeds, pooled, guidance: bool):
    """One sampler step's UNet call: classifier-free guidance doubles the batch (diffusers pipelines)."""
    batch = latents.shape[0]
    model_in = torch.cat([latents] * 2) if guidance else latents
    embeds = torch.cat([embeds] * 2) if guidance else embeds
    pooled = None if pooled is None else (torch.cat([pooled] * 2) if guidance else pooled)
    timestep = torch.empty((), dtype=torch.float32, device="meta")
    with torch.no_grad():
        pred = unet(model_in, timestep, encoder_hidden_states=embeds,
                    **unet_kwargs(family, pooled, model_in.shape[0])).sample
        if guidance:
            uncond, text = pred.chunk(2)
            pred = uncond + 7.0 * (text - uncond)
    return latents - pred[:batch]  # the scheduler's update: one elementwise op of the latent's size
