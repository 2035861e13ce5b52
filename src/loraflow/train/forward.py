"""The UNet call of a training or evaluation batch: text conditioning (cached or live) and the
family's micro-conditioning, shared by the training step and the held-out evaluation."""
from __future__ import annotations


def text_conditioning(model, texts, captions: list[str]):
    """(B, L, D) embeddings and (B, P) pooled (or None): live with gradients when a text encoder
    trains, from the text store otherwise."""
    from loraflow.train.cache import encode_text_live

    if model.text_encoders:
        return encode_text_live(model.pipe, model.family, captions)
    return texts.get(captions)


def predict(model, unet, noisy, timesteps, embeds, pooled, crops, original_sizes, device):
    """UNet prediction for `noisy` (B, C, h, w). `crops[i]` / `original_sizes[i]` (w, h) give SDXL's
    size and crop micro-conditioning (SDXL paper 2.2)."""
    import torch

    kwargs = {}
    if model.family.uses_time_ids:
        time_ids = [model.family.time_ids(*c.time_ids_args(s)) for c, s in zip(crops, original_sizes)]
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled.to(device),
                                       "time_ids": torch.tensor(time_ids, dtype=torch.float32, device=device)}
    return unet(noisy.to(device), timesteps.to(device), encoder_hidden_states=embeds.to(device), **kwargs).sample
