"""Complete tiny pipelines of each family, built in-process with fixed seeds; nothing is downloaded.

They keep the real architecture's *layout* (SDXL's three UNet levels with two layers each, so
kohya/SGM LoRA key names are the real ones; Kolors' `text_proj` ChatGLM projection; the VAE's
8x downsampling) with a few channels, so every code path (loading, LoRA, training, ControlNet)
runs on a CPU in well under a second per image at 64x64.

    pipe = build_tiny_pipeline("kolors")          # a diffusers KolorsPipeline
    save_tiny_model("sdxl", "/tmp/tiny-sdxl")     # a diffusers folder (model_index.json ...)
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from loraflow.errors import ConfigError

FAMILIES = ("sd15", "sdxl", "kolors")
TIME_EMBED_DIM = 8  # SDXL's addition_time_embed_dim is 256; 6 time ids each get this many channels
TEXT_DIM = 32  # hidden size of every tiny text encoder


def _unet(family: str):
    from diffusers import UNet2DConditionModel

    common = dict(
        sample_size=8,  # 64 px / VAE factor 8
        in_channels=4,
        out_channels=4,
        norm_num_groups=8,
    )
    if family == "sd15":
        return UNet2DConditionModel(
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=TEXT_DIM,
            attention_head_dim=4,
            **common,
        )
    # SDXL layout: DownBlock2D then two cross-attention levels, 2 layers each; SGM names map 1:1.
    sdxl = dict(
        block_out_channels=(16, 32, 32),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 4, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED_DIM,
        # pooled text embedding + 6 time ids (original size, crop top-left, target size)
        projection_class_embeddings_input_dim=TEXT_DIM + 6 * TIME_EMBED_DIM,
        **common,
    )
    if family == "sdxl":
        return UNet2DConditionModel(cross_attention_dim=2 * TEXT_DIM, **sdxl)
    # Kolors: ChatGLM hidden states (4096 in the real model) are projected to cross_attention_dim.
    return UNet2DConditionModel(
        cross_attention_dim=2 * TEXT_DIM, encoder_hid_dim_type="text_proj", encoder_hid_dim=TEXT_DIM, **sdxl
    )


def _vae(family: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(8, 16, 16, 16),  # four levels: 8x downsampling like the real VAEs
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.13025 if family != "sd15" else 0.18215,
        force_upcast=family != "sd15",
    )


def _clip_text_encoder(with_projection: bool, vocab_size: int):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        vocab_size=vocab_size,
        max_position_embeddings=77,
        projection_dim=TEXT_DIM,
        hidden_act="gelu",
        eos_token_id=vocab_size - 1,  # <|endoftext|> is the last id of the generated vocab
        bos_token_id=vocab_size - 2,
        pad_token_id=vocab_size - 1,
    )
    return (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)


def _chatglm_text_encoder(vocab_size: int):
    from diffusers.pipelines.kolors.text_encoder import ChatGLMConfig, ChatGLMModel

    config = ChatGLMConfig(
        num_layers=2,
        padded_vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
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


def build_tiny_components(family: str, seed: int = 0, workdir: str | Path | None = None) -> dict:
    """All components of a tiny pipeline of `family`, deterministic for a given seed."""
    import torch

    from loraflow.models.families import get_family
    from loraflow.models.tiny_tokenizers import build_chatglm_tokenizer, build_clip_tokenizer

    if family not in FAMILIES:
        raise ConfigError(f"unknown tiny model family '{family}'; choose one of: {', '.join(FAMILIES)}")
    fam = get_family(family)
    workdir = Path(workdir or tempfile.mkdtemp(prefix=f"loraflow-tiny-{family}-"))
    torch.manual_seed(seed)
    components: dict = {"unet": _unet(family)}
    torch.manual_seed(seed + 1)
    components["vae"] = _vae(family)
    components["scheduler"] = fam.default_scheduler()
    if family == "kolors":
        tok = build_chatglm_tokenizer(workdir / "tokenizer")
        torch.manual_seed(seed + 2)
        components.update(tokenizer=tok, text_encoder=_chatglm_text_encoder(tok.vocab_size))
        return components
    tok = build_clip_tokenizer(workdir / "tokenizer")
    torch.manual_seed(seed + 2)
    components.update(tokenizer=tok, text_encoder=_clip_text_encoder(False, len(tok)))
    if family == "sdxl":
        torch.manual_seed(seed + 3)
        components.update(tokenizer_2=tok, text_encoder_2=_clip_text_encoder(True, len(tok)))
    else:
        components.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    for module in components.values():
        if hasattr(module, "eval"):
            module.eval()
    return components


def build_tiny_pipeline(family: str, seed: int = 0, workdir: str | Path | None = None):
    """A diffusers pipeline (`StableDiffusionPipeline`, `StableDiffusionXLPipeline`, `KolorsPipeline`)."""
    from loraflow.models.families import get_family

    return get_family(family).pipeline_class()(**build_tiny_components(family, seed, workdir))


def save_tiny_model(family: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny model as a diffusers folder (`model_index.json`, safetensors weights)."""
    out_dir = Path(out_dir)
    pipe = build_tiny_pipeline(family, seed, workdir=out_dir / ".build")
    pipe.save_pretrained(out_dir, safe_serialization=True)
    import shutil

    shutil.rmtree(out_dir / ".build", ignore_errors=True)
    return out_dir
