"""Train the demo model from scratch: a small model of the SDXL family (StableDiffusionXLPipeline,
two CLIP text encoders, SDXL's UNet block layout and micro-conditioning) on the shapes data set.

Stage 1 trains the VAE (4x downsampling, 4 latent channels) on the images; its latent scale is set
so latents have unit variance (how SD's 0.18215 was chosen). Stage 2 trains the UNet on cached
latents and cached text embeddings of frozen, randomly initialised CLIP encoders over our own
tokenizer (distinct words give distinct features; the UNet learns to read them), with caption
dropout for classifier-free guidance and min-SNR weighting. Every seed is fixed.

    loraflow demo train --out models/demo --images 4000 --vae-steps 1500 --unet-steps 8000
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

TEXT_DIM = 64
TIME_DIM = 8


@dataclass
class DemoTrainConfig:
    out: str  # diffusers folder to write
    images: int = 4000  # training images generated (all from the training split of scenes)
    size: int = 64  # image side
    seed: int = 0
    vae_steps: int = 1500
    unet_steps: int = 8000
    batch_size: int = 32
    vae_lr: float = 1e-3
    unet_lr: float = 4e-4
    caption_dropout: float = 0.1  # empty caption this often: classifier-free guidance works
    min_snr_gamma: float = 5.0
    threads: int = 2
    log_every: int = 100
    save_every: int = 1000  # UNet steps between snapshots (OUT/snapshot, replaced atomically)


def build_components(seed: int = 0, size: int = 64) -> dict:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loraflow.models.families import get_family
    from loraflow.models.tiny_tokenizers import build_clip_tokenizer

    import tempfile

    tok = build_clip_tokenizer(Path(tempfile.mkdtemp(prefix="loraflow-demo-tok-")))
    vocab = len(tok)

    def clip(projection: bool, s: int):
        torch.manual_seed(s)
        config = CLIPTextConfig(hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=2,
                                num_attention_heads=4, vocab_size=vocab, max_position_embeddings=77,
                                projection_dim=TEXT_DIM, eos_token_id=vocab - 1, bos_token_id=vocab - 2,
                                pad_token_id=vocab - 1)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=size, scaling_factor=1.0)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=size // 4, in_channels=4, out_channels=4, norm_num_groups=8,
        block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1), attention_head_dim=(4, 8, 8), use_linear_projection=True,
        cross_attention_dim=2 * TEXT_DIM, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=TEXT_DIM + 6 * TIME_DIM)
    return dict(vae=vae, unet=unet, text_encoder=clip(False, seed + 2), text_encoder_2=clip(True, seed + 3),
                tokenizer=tok, tokenizer_2=tok, scheduler=EulerDiscreteScheduler(**get_family("sdxl").schedule))


def _images_tensor(cfg: DemoTrainConfig):
    import random

    import numpy as np
    import torch

    from loraflow.demo.shapes import all_scenes, draw_scene, split_held_out

    train, _ = split_held_out(all_scenes(), seed=0)
    rng = random.Random(cfg.seed)
    scenes = [rng.choice(train) for _ in range(cfg.images)]
    pixels = np.stack([np.asarray(draw_scene(s, cfg.size, jitter=0.06, rng=rng)) for s in scenes])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (N, 3, H, W) in [-1, 1]
    captions = [s.caption(("en", "zh")[i % 2]) for i, s in enumerate(scenes)]
    return x, captions


def train_vae(vae, x, cfg: DemoTrainConfig, say) -> None:
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    vae.train()
    for step in range(1, cfg.vae_steps + 1):
        batch = x[torch.randint(0, len(x), (cfg.batch_size,), generator=g)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = torch.nn.functional.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0:
            say(f"vae step {step}/{cfg.vae_steps} loss {loss.item():.5f}")
    vae.eval()


def save_pipeline(components, out: Path) -> Path:
    """Write the pipeline as a diffusers folder; a temp folder renamed into place, never half a model."""
    import shutil

    from diffusers import StableDiffusionXLPipeline

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionXLPipeline(**components).save_pretrained(tmp, safe_serialization=True)
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def train_unet(components, latents, embeds, pooled, caption_index, cfg: DemoTrainConfig, say) -> None:
    import torch

    from loraflow.models.families import get_family

    unet = components["unet"]
    noise_scheduler = get_family("sdxl").noise_scheduler()
    alphas = noise_scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    g = torch.Generator().manual_seed(cfg.seed + 10)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.unet_steps))))
    time_ids = torch.tensor([[cfg.size, cfg.size, 0, 0, cfg.size, cfg.size]], dtype=torch.float32)
    unet.train()
    empty = len(embeds) - 1  # the last cached prompt is "" (caption dropout)
    for step in range(1, cfg.unet_steps + 1):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=g)
        caps = caption_index[idx].clone()
        caps[torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout] = empty
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        zt = noise_scheduler.add_noise(z0, noise, t)
        pred = unet(zt, t, encoder_hidden_states=embeds[caps],
                    added_cond_kwargs={"text_embeds": pooled[caps], "time_ids": time_ids.repeat(cfg.batch_size, 1)}).sample
        weight = torch.clamp(snr[t], max=cfg.min_snr_gamma) / snr[t]  # min-SNR-gamma, epsilon (Hang et al. 2023)
        loss = (weight * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % cfg.log_every == 0:
            say(f"unet step {step}/{cfg.unet_steps} loss {loss.item():.5f}")
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.unet_steps:
            unet.eval()
            save_pipeline(components, Path(cfg.out).with_name(Path(cfg.out).name + "-snapshot"))
            unet.train()
            say(f"snapshot at step {step}")
    unet.eval()


def train_demo_model(cfg: DemoTrainConfig, say=print) -> Path:
    import torch
    from diffusers import StableDiffusionXLPipeline

    from loraflow.models.families import get_family

    torch.set_num_threads(cfg.threads)
    started = time.time()
    components = build_components(cfg.seed, cfg.size)
    x, captions = _images_tensor(cfg)
    say(f"{len(x)} images of {cfg.size}px; {len(set(captions))} distinct captions")
    # 1. VAE, then its latent scale
    train_vae(components["vae"], x, cfg, say)
    with torch.no_grad():
        latents = torch.cat([components["vae"].encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    scale = float(1.0 / latents.std())
    components["vae"].register_to_config(scaling_factor=scale)
    latents = latents * scale
    say(f"vae done ({time.time() - started:.0f} s); latent scale {scale:.4f}")
    # 2. text embeddings of every distinct caption (+ "" for dropout), by the SDXL family's encoder
    prompts = sorted(set(captions)) + [""]
    pipe = StableDiffusionXLPipeline(**components)
    with torch.no_grad():
        encoded = get_family("sdxl").encode_prompts(pipe, prompts)
    embeds = torch.cat([e.embeds for e in encoded])  # (P, 77, 128)
    pooled = torch.cat([e.pooled for e in encoded])  # (P, 64)
    index = {p: i for i, p in enumerate(prompts)}
    caption_index = torch.tensor([index[c] for c in captions])
    # 3. UNet
    train_unet(components, latents, embeds, pooled, caption_index, cfg, say)
    out = save_pipeline(components, Path(cfg.out))
    say(f"saved {out} ({time.time() - started:.0f} s total)")
    return out
