"""Train the demo model from scratch: a small model of the SDXL family (StableDiffusionXLPipeline,
two CLIP text encoders, SDXL's UNet block layout and micro-conditioning) on the shapes data set.

Stage 1 trains the VAE (4x downsampling, 8 latent channels) on the images; its latent scale is set
so latents have unit variance (how SD's 0.18215 was chosen). Stage 1b fine-tunes the VAE decoder
alone on plain and striped shapes (the encoder, so the latent space, stays fixed, as Stability's
ft-MSE VAE did): the codec can then show textures the UNet never learns, such as the stripes a demo
LoRA teaches (a decoder trained on flat shapes alone renders stripes as noise). Stage 2 trains the
UNet on cached latents and cached text embeddings of frozen, randomly initialised one-layer CLIP encoders over our
own tokenizer, in which every caption word (English and Chinese) is one token. SDXL conditions on the
penultimate hidden state, which for a one-layer encoder is the token embedding itself: each word
reaches the UNet's cross-attention unmixed with its neighbours, so "pink circle" can be drawn even
if only pink stars were seen. The pooled projection of encoder 2 is zero for the same reason (a
pooled vector of the whole caption lets the UNet memorise colour/shape pairs). Caption dropout for
classifier-free guidance, min-SNR weighting; every seed is fixed.

    loraflow demo train --out models/demo --images 4000 --vae-steps 1200 --decoder-steps 300 --unet-steps 7000
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from loraflow.atomic import apply_umask
from loraflow.demo.shapes import ZH, all_scenes, caption_vocabulary, draw_scene, split_held_out
from loraflow.models.families.sdxl import SDXL
from loraflow.models.tiny_tokenizers import WORDS, build_clip_tokenizer

TEXT_DIM = 64
TIME_DIM = 8
LATENT_CHANNELS = 8


def demo_words() -> tuple[str, ...]:
    """Every caption word of the shapes data set, English and Chinese, as single tokens."""

    return tuple(WORDS) + ("background", "背景", "有一个", "的", "条纹") + tuple(ZH.values())


@dataclass
class DemoTrainConfig:
    out: str  # diffusers folder to write
    images: int = 4000  # training images generated (all from the training split of scenes)
    size: int = 64  # image side
    seed: int = 0
    vae_steps: int = 1200
    decoder_steps: int = 300  # stage 1b: decoder-only fine-tune on plain + striped shapes
    decoder_images: int = 3000  # stage 1b images, half plain, half striped
    unet_steps: int = 7000
    batch_size: int = 32
    vae_lr: float = 1e-3
    decoder_lr: float = 2e-4
    unet_lr: float = 4e-4
    caption_dropout: float = 0.1  # empty caption this often: classifier-free guidance works
    min_snr_gamma: float = 5.0
    threads: int = 2
    log_every: int = 100
    save_every: int = 1000  # UNet steps between snapshots (OUT/snapshot, replaced atomically)
    vae_from: str | None = None  # reuse the VAE of an earlier run (a diffusers vae folder): stage 1 is skipped


def build_components(seed: int = 0, size: int = 64) -> dict:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    import tempfile

    with tempfile.TemporaryDirectory(prefix="loraflow-demo-tok-") as workdir:
        tok = build_clip_tokenizer(workdir, words=demo_words())
    vocab = len(tok)

    def clip(projection: bool, s: int):
        torch.manual_seed(s)
        config = CLIPTextConfig(hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=1,
                                num_attention_heads=4, vocab_size=vocab, max_position_embeddings=77,
                                projection_dim=TEXT_DIM, eos_token_id=vocab - 1, bos_token_id=vocab - 2,
                                pad_token_id=vocab - 1)
        model = (CLIPTextModelWithProjection if projection else CLIPTextModel)(config).eval()
        # unit-variance token codes (CLIP's init is std 0.02: too faint for cross-attention to read)
        torch.nn.init.normal_(model.get_input_embeddings().weight, std=1.0)
        if projection:
            torch.nn.init.zeros_(model.text_projection.weight)  # pooled = 0: words reach the UNet unmixed
        return model

    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=LATENT_CHANNELS, block_out_channels=(16, 32, 32),
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                        layers_per_block=1, norm_num_groups=8, sample_size=size, scaling_factor=1.0)
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=size // 4, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS, norm_num_groups=8,
        block_out_channels=(32, 64, 64), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 1), attention_head_dim=(4, 8, 8), use_linear_projection=True,
        cross_attention_dim=2 * TEXT_DIM, addition_embed_type="text_time", addition_time_embed_dim=TIME_DIM,
        projection_class_embeddings_input_dim=TEXT_DIM + 6 * TIME_DIM)
    return dict(vae=vae, unet=unet, text_encoder=clip(False, seed + 2), text_encoder_2=clip(True, seed + 3),
                tokenizer=tok, tokenizer_2=tok, scheduler=EulerDiscreteScheduler(**SDXL.schedule))


def _pixels(scenes, size: int, rng):
    """Drawn scenes as a float tensor (N, 3, H, W) in [-1, 1], the VAE's input range."""
    import numpy as np
    import torch

    x = torch.from_numpy(np.stack([np.asarray(draw_scene(s, size, jitter=0.06, rng=rng)) for s in scenes]))
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _images_tensor(cfg: DemoTrainConfig):
    import random

    train, _ = split_held_out(all_scenes(), seed=0)
    rng = random.Random(cfg.seed)
    scenes = [rng.choice(train) for _ in range(cfg.images)]
    x = _pixels(scenes, cfg.size, rng)
    captions = [s.caption(("en", "zh")[i % 2]) for i, s in enumerate(scenes)]
    return x, captions


def train_vae(vae, x, cfg: DemoTrainConfig, say) -> None:
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.55 + 0.45 * math.cos(math.pi * min(1.0, s / cfg.vae_steps)))
    vae.train()
    for step in range(1, cfg.vae_steps + 1):
        batch = x[torch.randint(0, len(x), (cfg.batch_size,), generator=g)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=g)).sample
        loss = torch.nn.functional.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % cfg.log_every == 0:
            say(f"vae step {step}/{cfg.vae_steps} loss {loss.item():.5f}")
    vae.eval()


def finetune_decoder(vae, cfg: DemoTrainConfig, say) -> None:
    """Stage 1b: train only the decoder (and post-quant conv) on half plain, half striped shapes of the
    training split; the encoder is frozen, so latents of earlier stages stay valid."""
    import random

    import torch

    rng = random.Random(cfg.seed + 5)
    pools = [split_held_out(all_scenes(style), seed=0)[0] for style in ("plain", "striped")]
    scenes = [rng.choice(pool) for pool in pools for _ in range(cfg.decoder_images // 2)]
    x = _pixels(scenes, cfg.size, rng)
    with torch.no_grad():
        latents = torch.cat([vae.encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    vae.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    g = torch.Generator().manual_seed(cfg.seed + 6)
    opt = torch.optim.AdamW(trained, lr=cfg.decoder_lr)
    vae.decoder.train()
    for step in range(1, cfg.decoder_steps + 1):
        idx = torch.randint(0, len(x), (cfg.batch_size,), generator=g)
        loss = torch.nn.functional.mse_loss(vae.decode(latents[idx]).sample, x[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % cfg.log_every == 0:
            say(f"decoder step {step}/{cfg.decoder_steps} loss {loss.item():.5f}")
    vae.requires_grad_(False)
    vae.eval()


def vae_round_trip_accuracy(vae, n: int = 256, size: int = 64, seed: int = 99, style: str = "plain") -> dict[str, float]:
    """The checker's reading of encoded-then-decoded training scenes: the ceiling any UNet can reach
    (style="striped": also the mean stripe score, which a striped LoRA can reach at most)."""
    import random

    import numpy as np
    import torch
    from PIL import Image

    from loraflow.demo.checker import accuracy, read_image

    rng = random.Random(seed)
    scenes = [rng.choice(split_held_out(all_scenes(style), seed=0)[0]) for _ in range(n)]
    with torch.no_grad():
        out = vae.decode(vae.encode(_pixels(scenes, size, rng)).latent_dist.mean).sample
    pixels = ((out.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    images = [Image.fromarray(a) for a in pixels]
    scores = accuracy(zip(images, scenes))
    if style == "striped":
        scores["stripes"] = float(np.mean([read_image(im).stripes for im in images]))
    return {k: round(v, 3) for k, v in scores.items()}


def save_pipeline(components, out: Path) -> Path:
    """Write the pipeline as a diffusers folder; a temp folder renamed into place, never half a model."""
    import shutil

    from diffusers import StableDiffusionXLPipeline

    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    StableDiffusionXLPipeline(**components).save_pretrained(tmp, safe_serialization=True)
    apply_umask(tmp)
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def train_unet(components, latents, embeds, pooled, caption_index, cfg: DemoTrainConfig, say) -> None:
    import torch

    from loraflow.train.objective import diffusion_loss

    unet = components["unet"]
    noise_scheduler = SDXL.noise_scheduler()
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
        loss = diffusion_loss(pred, noise, t, noise_scheduler, "epsilon", cfg.min_snr_gamma)
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


def write_model_card(out: Path, cfg: DemoTrainConfig, seconds: float, log: dict | None = None) -> Path:
    """`loraflow.json` beside the weights: the label and default sampling settings loraflow reads, and
    the exact recipe (command, seeds, data) that made the weights."""
    import dataclasses
    import json
    import platform

    import torch

    card = {
        "label": "loraflow demo model: 64 px coloured shapes, trained from scratch by `loraflow demo train` "
                 "(not a general text-to-image model)",
        "defaults": {"height": cfg.size, "width": cfg.size, "num_inference_steps": 20, "guidance_scale": 5.0},
        "vocabulary": caption_vocabulary(),  # prompts with other words get a notice (models/vocabulary.py)
        "command": f"loraflow demo train --out {cfg.out} --images {cfg.images} --vae-steps {cfg.vae_steps} "
                   f"--unet-steps {cfg.unet_steps} --batch-size {cfg.batch_size} --seed {cfg.seed} --threads {cfg.threads}"
                   + (f" --vae-from {Path(cfg.vae_from).name}" if cfg.vae_from else ""),
        "config": dataclasses.asdict(cfg) | {"out": Path(cfg.out).name},
        "data": "loraflow.demo.shapes: all_scenes() minus split_held_out(seed=0) (15% of colour/shape pairs "
                "held out); captions alternate English/Chinese; jitter 0.06",
        "training_seconds": round(seconds),
        "hardware": f"{platform.processor() or platform.machine()}, {cfg.threads} CPU threads, torch {torch.__version__}",
    } | (log or {})
    path = Path(out) / "loraflow.json"
    path.write_text(json.dumps(card, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return path


def train_demo_model(cfg: DemoTrainConfig, say=print) -> Path:
    import torch
    from diffusers import StableDiffusionXLPipeline

    torch.set_num_threads(cfg.threads)
    started = time.time()
    components = build_components(cfg.seed, cfg.size)
    x, captions = _images_tensor(cfg)
    say(f"{len(x)} images of {cfg.size}px; {len(set(captions))} distinct captions")
    # 1. VAE, then its latent scale
    if cfg.vae_from:
        from diffusers import AutoencoderKL

        components["vae"] = AutoencoderKL.from_pretrained(cfg.vae_from).eval()
        say(f"vae from {cfg.vae_from} (stage 1 skipped)")
    else:
        train_vae(components["vae"], x, cfg, say)
    with torch.no_grad():
        latents = torch.cat([components["vae"].encode(x[i:i + 256]).latent_dist.mean for i in range(0, len(x), 256)])
    scale = float(1.0 / latents.std())
    components["vae"].register_to_config(scaling_factor=scale)
    latents = latents * scale
    vae_check = vae_round_trip_accuracy(components["vae"], 256, cfg.size)
    say(f"vae done ({time.time() - started:.0f} s); latent scale {scale:.4f}; checker on VAE round trips: {vae_check}")
    if cfg.decoder_steps:  # the encoder stays frozen: the latents above are unchanged
        finetune_decoder(components["vae"], cfg, say)
        vae_check = {"plain": vae_round_trip_accuracy(components["vae"], 256, cfg.size),
                     "striped": vae_round_trip_accuracy(components["vae"], 256, cfg.size, style="striped")}
        say(f"decoder done ({time.time() - started:.0f} s); checker on VAE round trips: {vae_check}")
    # 2. text embeddings of every distinct caption (+ "" for dropout), by the SDXL family's encoder
    prompts = sorted(set(captions)) + [""]
    pipe = StableDiffusionXLPipeline(**components)
    with torch.no_grad():
        encoded = SDXL.encode_prompts(pipe, prompts)
    embeds = torch.cat([e.embeds for e in encoded])  # (P, 77, 128)
    pooled = torch.cat([e.pooled for e in encoded])  # (P, 64)
    index = {p: i for i, p in enumerate(prompts)}
    caption_index = torch.tensor([index[c] for c in captions])
    # 3. UNet
    train_unet(components, latents, embeds, pooled, caption_index, cfg, say)
    out = save_pipeline(components, Path(cfg.out))
    write_model_card(out, cfg, time.time() - started, {"vae_round_trip_checker": vae_check})
    say(f"saved {out} ({time.time() - started:.0f} s total)")
    return out
