"""Randomly initialised tiny text encoders for the tiny test models (each family's
`tiny_text_components` picks the ones it needs); nothing is downloaded."""
from __future__ import annotations


def clip_text_encoder(hidden_size: int, with_projection: bool, vocab_size: int):
    """A 3-layer CLIP text encoder; `with_projection`: SDXL's second encoder (pooled output)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=hidden_size,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=hidden_size,
        hidden_act="gelu",
        eos_token_id=vocab_size - 1,  # <|endoftext|> is the last id of the generated vocab
        bos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def chatglm_text_encoder(hidden_size: int, vocab_size: int):
    """A 2-layer ChatGLM (Kolors' text encoder architecture, diffusers' copy of it)."""
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    config = ChatGLMConfig(
        num_layers=2,
        padded_vocab_size=vocab_size,
        hidden_size=hidden_size,
        ffn_hidden_size=37,
        kv_channels=8,
        num_attention_heads=4,
        seq_length=256,
        multi_query_attention=True,
        multi_query_group_num=2,
        original_rope=True,
        torch_dtype="float32",
    )
    return init_chatglm_weights(ChatGLMModel(config))


def init_chatglm_weights(model):
    """ChatGLM's `_init_weights` is a no-op (weights always come from a checkpoint), so a fresh
    model holds uninitialised memory: initialise it the way the GLM paper's code does."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("layernorm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    return model
