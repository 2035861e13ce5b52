"""Training throughput and peak memory: loraflow vs a reference loop, side by side, as ratios.

The reference is written the way diffusers' `examples/text_to_image/train_text_to_image_lora_sdxl.py`
trains: every step loads and transforms the images, VAE-encodes them (`latent_dist.sample()`),
runs both CLIP text encoders on the captions, then UNet forward/backward on peft LoRA
(to_q/to_k/to_v/to_out.0) and an AdamW step. loraflow caches latents and text embeddings on disk
first (the cache time is reported separately) and releases the encoders while training; on a warm
cache (a second run over the same data and model) it loads the UNet alone: the VAE and text encoders
are never read from disk.

Both sides get the same SDXL-shaped model (a small diffusers folder written here: SDXL's UNet block
layout, two CLIP encoders, 8x VAE), the same data, resolution, batch, rank, optimizer, precision,
and one CPU thread each. Each side runs in its own subprocess so its peak RSS
(`resource.getrusage(...).ru_maxrss`) is its own.

    python bench/train.py [--steps 20] [--resolution 256] [--batch-size 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# ---- the shared model and data ------------------------------------------------------------------
def write_model(folder: Path) -> Path:
    """A small SDXL-shaped diffusers folder: ~1/8 of SDXL's widths, its layout and proportions
    (text encoders + VAE are a sizeable share of the weights, as in SDXL)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from loraflow.models.families import get_family
    from loraflow.models.tiny_tokenizers import build_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    tok = build_clip_tokenizer(folder.parent / "tok")
    vocab = len(tok)

    def clip(hidden, layers, heads, projection):
        config = CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                num_attention_heads=heads, vocab_size=vocab, max_position_embeddings=77,
                                projection_dim=hidden, eos_token_id=vocab - 1, bos_token_id=vocab - 2,
                                pad_token_id=vocab - 1)
        return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)

    te1, te2 = clip(96, 12, 4, False), clip(160, 32, 4, True)  # CLIP-L 768x12, bigG 1280x32, /8 wide
    unet = UNet2DConditionModel(
        sample_size=32, in_channels=4, out_channels=4, norm_num_groups=8,
        block_out_channels=(40, 80, 160), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 4), attention_head_dim=(5, 10, 20), use_linear_projection=True,
        cross_attention_dim=96 + 160, addition_embed_type="text_time", addition_time_embed_dim=32,
        projection_class_embeddings_input_dim=160 + 6 * 32,
    )
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64, 64),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        latent_channels=4, norm_num_groups=8, sample_size=256, scaling_factor=0.13025)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te1, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=EulerDiscreteScheduler(**get_family("sdxl").schedule))
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def write_dataset(root: Path, n: int, size: int) -> Path:
    import csv
    import random

    from PIL import Image, ImageDraw

    if (root / "train" / "metadata.csv").is_file():
        return root
    rng = random.Random(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        colour = rng.choice(["red", "green", "blue", "yellow"])
        rgb = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}[colour]
        image = Image.new("RGB", (size, size), (245, 245, 240))
        x, y = rng.randint(0, size // 3), rng.randint(0, size // 3)
        ImageDraw.Draw(image).ellipse((x, y, x + size // 2, y + size // 2), fill=rgb)
        image.save(root / "train" / f"{i:03d}.png")
        rows.append({"file_name": f"{i:03d}.png", "text": f"a {colour} circle on a white background"})
    with open(root / "train" / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file_name", "text"])
        writer.writeheader()
        writer.writerows(rows)
    return root


# ---- the two sides (each runs in its own process) -------------------------------------------------
def run_loraflow(args) -> dict:
    from loraflow.train.trainer import train

    started = time.time()
    result = train(dict(model=args.model, dataset=args.dataset, output=args.work + "/out-loraflow",
                        cache_dir=args.cache_dir, resolution=args.resolution, batch_size=args.batch_size,
                        lora_rank=args.rank, lora_alpha=args.rank, max_steps=args.steps, learning_rate=1e-4,
                        mixed_precision=args.mixed_precision, device="cpu", seed=0, keep_checkpoints=1))
    return {"steps_per_s": result.stats["steps_per_second"], "loop_s": result.stats["loop_seconds"],
            "steps_per_cpu_s": args.steps / result.stats["loop_cpu_seconds"],
            "total_s": time.time() - started, "vae_calls": result.stats["vae_encode_calls"],
            "encoders_loaded": result.stats["encoders_loaded"]}


def run_reference(args) -> dict:
    """diffusers' train_text_to_image_lora_sdxl.py, reduced to its per-step work."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler, StableDiffusionXLPipeline
    from peft import LoraConfig
    from PIL import Image

    from loraflow.data.training_manifest import read_training_items

    started = time.time()
    weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    pipe = StableDiffusionXLPipeline.from_pretrained(args.model, torch_dtype=weight_dtype)
    unet, vae, te1, te2, tok = pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer
    for m in (unet, vae, te1, te2):
        m.requires_grad_(False)
    vae.to(torch.float32)  # the script keeps the SDXL VAE in fp32 (it overflows in fp16)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=args.rank, lora_alpha=args.rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    items = read_training_items(args.dataset)
    res = args.resolution

    def transform(path):  # Resize + CenterCrop + ToTensor + Normalize([0.5], [0.5])
        image = Image.open(path).convert("RGB")
        scale = res / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
        left, top = (image.width - res) // 2, (image.height - res) // 2
        image = image.crop((left, top, left + res, top + res))
        return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)

    def encode_prompt(captions):  # the script's encode_prompt: penultimate states of both, pooled of the 2nd
        embeds = []
        for encoder in (te1, te2):
            ids = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]
            embeds.append(out.hidden_states[-2])
        return torch.cat(embeds, dim=-1), pooled

    unet.train()
    loop_started, loop_cpu = time.time(), time.process_time()
    for step in range(args.steps):
        batch = [items[(step * args.batch_size + i) % len(items)] for i in range(args.batch_size)]
        pixels = torch.stack([transform(i.image_path) for i in batch])
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            embeds, pooled = encode_prompt([i.caption for i in batch])
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],))
        noisy = noise_scheduler.add_noise(latents, noise, t)
        time_ids = torch.tensor([[res, res, 0, 0, res, res]] * latents.shape[0], dtype=weight_dtype)
        with torch.autocast("cpu", dtype=weight_dtype, enabled=weight_dtype != torch.float32):
            pred = unet(noisy.to(weight_dtype), t, embeds.to(weight_dtype),
                        added_cond_kwargs={"text_embeds": pooled.to(weight_dtype), "time_ids": time_ids}).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    loop, loop_cpu = time.time() - loop_started, time.process_time() - loop_cpu
    return {"steps_per_s": args.steps / loop, "loop_s": loop, "steps_per_cpu_s": args.steps / loop_cpu,
            "total_s": time.time() - started,
            "vae_calls": args.steps, "encoders_loaded": True}


def child(args) -> None:
    import resource

    import torch

    torch.set_num_threads(1)
    # the same libraries on both sides, so the baseline (interpreter + libraries) is comparable
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionXLPipeline  # noqa: F401

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = run_loraflow(args) if args.side == "loraflow" else run_reference(args)
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    out["model_rss_mb"] = out["max_rss_mb"] - baseline  # what training itself added
    print("BENCH " + json.dumps(out), flush=True)


def side(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--side", name, "--model", args.model, "--dataset", args.dataset,
           "--work", args.work, "--steps", str(args.steps), "--resolution", str(args.resolution),
           "--batch-size", str(args.batch_size), "--rank", str(args.rank), "--mixed-precision", args.mixed_precision,
           "--cache-dir", args.cache_dir]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="runs per side; the fastest counts")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16"])
    parser.add_argument("--side", choices=["loraflow", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--work", help="working folder (model, data, caches); default: a new temp folder")
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return child(args)
    args.work = args.work or tempfile.mkdtemp(prefix="loraflow-bench-train-")
    args.model = str(write_model(Path(args.work) / "model"))
    args.dataset = str(write_dataset(Path(args.work) / "data", args.images, args.resolution))
    print(f"SDXL-shaped model, {args.images} images at {args.resolution}px, batch {args.batch_size}, "
          f"rank {args.rank}, {args.steps} steps, precision {args.mixed_precision}, 1 CPU thread per side")
    # The machine is shared: alternate the sides and keep each side's fastest run (min of repeats).
    args.cache_dir = str(Path(args.work) / f"cache-{time.time_ns()}")  # empty: the first run is really cold
    cold = side("loraflow", args)  # first run: fills the cache
    refs, warms = [], []
    for _ in range(args.repeats):
        refs.append(side("reference", args))
        warms.append(side("loraflow", args))  # cache reused, nothing encoded
    ref = max(refs, key=lambda r: r["steps_per_cpu_s"])
    warm = max(warms, key=lambda r: r["steps_per_cpu_s"])
    rows = [("reference (diffusers-style)", ref), ("loraflow, cold cache", cold), ("loraflow, warm cache", warm)]
    print(f"{'':28} {'steps/CPU-s':>11} {'steps/s':>8} {'loop s':>7} {'total s':>8} {'peak RSS MB':>12} "
          f"{'above libs MB':>14} {'VAE calls':>10} {'VAE+TE loaded':>14}")
    for label, r in rows:
        print(f"{label:28} {r['steps_per_cpu_s']:11.3f} {r['steps_per_s']:8.3f} {r['loop_s']:7.1f} {r['total_s']:8.1f} "
              f"{r['max_rss_mb']:12.0f} {r['model_rss_mb']:14.0f} {r['vae_calls']:10d} "
              f"{'yes' if r['encoders_loaded'] else 'no':>14}")
    print("(steps per CPU-second: one thread each, so contention from other work on the machine does not count)")
    for label, r in rows[1:]:
        print(f"{label}: throughput x{r['steps_per_cpu_s'] / ref['steps_per_cpu_s']:.2f} per CPU-second, "
              f"x{r['steps_per_s'] / ref['steps_per_s']:.2f} wall (target >= 1.5); "
              f"peak RSS x{r['max_rss_mb'] / ref['max_rss_mb']:.2f}, above libraries "
              f"x{r['model_rss_mb'] / ref['model_rss_mb']:.2f} (target <= 0.6); "
              f"end-to-end time x{r['total_s'] / ref['total_s']:.2f}")


if __name__ == "__main__":
    main()
