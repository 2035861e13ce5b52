"""Training throughput and peak memory: loraflow vs a reference loop, side by side, as ratios.

The reference is written the way diffusers' `examples/text_to_image/train_text_to_image_lora_sdxl.py`
trains: every step loads and transforms the images, VAE-encodes them (`latent_dist.sample()`, the
VAE in fp32), runs the text encoders on the captions (SDXL: both CLIPs as the script does; Kolors:
`KolorsPipeline.encode_prompt`, ChatGLM over 256 tokens), then UNet forward/backward on peft LoRA
(to_q/to_k/to_v/to_out.0) and an AdamW step. loraflow caches latents and text embeddings on disk
first (the cache time is reported separately) and releases the encoders while training; on a warm
cache (a second run over the same data and model) it loads the UNet alone.

Both sides get the same model, data, resolution, batch, rank, optimizer and precision, each side in
its own subprocess so its memory is its own, and on a CPU one thread each. The model is SDXL or
Kolors scaled down by `--scale` k (bench/shaped_models.py): widths / k, pixels / k, text-encoder
depth / k, which keeps each part's share of a step's FLOPs what it is at full size; the script
prints those shares for the full-size model and for the bench model, and the throughput bound
they imply when caching removes the VAE and text encoders from the step. Time per step is the
median of steps 2..N; memory is the peak over steps 2..N (the steady-state training loop); the
sides alternate and the headline ratio is the median over adjacent (reference, loraflow) pairs.

    python bench/train.py [--family sdxl kolors] [--scale 4] [--steps 6] [--repeats 3]
    # a GPU: full-size models with random weights at 1024 px, wall time, max_memory_allocated, MFU
    python bench/train.py --device cuda --scale 1 --mixed-precision bf16 --steps 20 --repeats 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shaped_models  # noqa: E402


# ---- the shared model and data ------------------------------------------------------------------
def write_model(folder: Path, family: str, k: int) -> Path:
    """A diffusers folder of `family` scaled by k, random weights (seeded)."""
    import torch

    from loraflow.models.families import get_family
    from loraflow.models.tiny_tokenizers import build_chatglm_tokenizer, build_clip_tokenizer

    if (folder / "model_index.json").is_file():
        return folder
    torch.manual_seed(0)
    modules = shaped_models.build(family, k)
    fam = get_family(family)
    if family == "sdxl":
        tok = build_clip_tokenizer(folder.parent / "tok")
        for name in ("text_encoder", "text_encoder_2"):
            modules[name].config.update(dict(eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
                                             pad_token_id=tok.pad_token_id))
        modules.update(tokenizer=tok, tokenizer_2=tok)
    else:
        modules["tokenizer"] = build_chatglm_tokenizer(folder.parent / "tok")
    pipe = fam.pipeline_class()(scheduler=fam.default_scheduler(), **modules)
    if k == 1:  # full size: ~9 GB (SDXL) / ~18 GB (Kolors) in fp16 instead of twice that
        pipe.to(torch.float16)
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
def _status_mb(key: str) -> float:
    """VmRSS (resident now) or VmHWM (peak since start or the last reset) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {key} (the bench needs Linux)")


class StepMeter:
    """Called after every training step on both sides: time per step (CPU seconds of the one thread
    on the CPU; wall seconds after a synchronize on a GPU), and the peak memory of the steady-state
    loop: the peak is reset after step 1, once loading, caching and first-step allocations are over;
    the VAE and text encoders, if resident, stay counted. CPU: peak RSS; GPU: max_memory_allocated."""

    def __init__(self, device: str):
        import torch

        self.cuda = device.startswith("cuda")
        self.clock = time.perf_counter if self.cuda else time.process_time
        self.sync = torch.cuda.synchronize if self.cuda else (lambda: None)
        self.last, self.step_s = self.clock(), []

    def __call__(self, step: int, total: int = 0) -> None:
        import torch

        self.sync()
        now = self.clock()
        self.step_s.append(now - self.last)
        self.last = now
        if step == 1 and self.cuda:
            torch.cuda.reset_peak_memory_stats()
        elif step == 1:
            Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM to the current RSS

    def result(self, **extra) -> dict:
        import torch

        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _status_mb("VmHWM")
        return {"step_s": statistics.median_high(self.step_s[1:] or self.step_s), "loop_peak_mb": peak, **extra}


def run_loraflow(args) -> dict:
    from loraflow.train.trainer import train

    meter = StepMeter(args.device)
    result = train(dict(model=args.model, dataset=args.dataset, output=args.work + "/out-loraflow",
                        cache_dir=args.cache_dir, resolution=args.resolution, batch_size=args.batch_size,
                        lora_rank=args.rank, lora_alpha=args.rank, max_steps=args.steps, learning_rate=1e-4,
                        mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing,
                        device=args.device, seed=0, keep_checkpoints=1, log_every=10**9),
                   progress=meter)
    return meter.result(vae_calls=result.stats["vae_encode_calls"], encoders_loaded=result.stats["encoders_loaded"])


def run_reference(args) -> dict:
    """diffusers' train_text_to_image_lora_sdxl.py, reduced to its per-step work."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from diffusers import DDPMScheduler
    from peft import LoraConfig
    from PIL import Image

    from loraflow.data.training_manifest import read_training_items
    from loraflow.models.families import get_family

    weight_dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.mixed_precision]
    pipe = get_family(args.family).pipeline_class().from_pretrained(args.model, torch_dtype=weight_dtype)
    unet, vae = pipe.unet, pipe.vae
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if args.family == "sdxl" else [])
    for m in (unet, vae, *encoders):
        m.requires_grad_(False)
    vae.to(torch.float32)  # the script keeps the SDXL VAE in fp32 (it overflows in fp16)
    device = torch.device(args.device)
    for m in (unet, vae, *encoders):
        m.to(device)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
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

    def encode_prompt(captions):
        if args.family == "kolors":  # KolorsPipeline.encode_prompt: ChatGLM, 256 tokens
            embeds, _, pooled, _ = pipe.encode_prompt(captions, device=device, do_classifier_free_guidance=False)
            return embeds, pooled
        embeds = []  # the script's encode_prompt: penultimate states of both CLIPs, pooled of the 2nd
        for encoder in encoders:
            ids = pipe.tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                                 return_tensors="pt").input_ids.to(device)
            out = encoder(ids, output_hidden_states=True)
            pooled = out[0]
            embeds.append(out.hidden_states[-2])
        return torch.cat(embeds, dim=-1), pooled

    unet.train()
    meter = StepMeter(args.device)
    for step in range(args.steps):
        batch = [items[(step * args.batch_size + i) % len(items)] for i in range(args.batch_size)]
        pixels = torch.stack([transform(i.image_path) for i in batch]).to(device)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
            embeds, pooled = encode_prompt([i.caption for i in batch])
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        time_ids = torch.tensor([[res, res, 0, 0, res, res]] * latents.shape[0], dtype=weight_dtype, device=device)
        with torch.autocast(device.type, dtype=weight_dtype, enabled=weight_dtype != torch.float32):
            pred = unet(noisy.to(weight_dtype), t, embeds.to(weight_dtype),
                        added_cond_kwargs={"text_embeds": pooled.to(weight_dtype), "time_ids": time_ids}).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        meter(step + 1)
    return meter.result(vae_calls=args.steps, encoders_loaded=True)


def child(args) -> None:
    import resource

    import torch

    if args.device == "cpu":
        torch.set_num_threads(1)
    # the same libraries on both sides, so the baseline (interpreter + libraries) is comparable
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionXLPipeline  # noqa: F401

    baseline = _status_mb("VmRSS")
    started = time.time()
    out = run_loraflow(args) if args.side == "loraflow" else run_reference(args)
    out["total_s"] = time.time() - started
    out["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; whole run
    # the training loop's peak above the libraries (CPU RSS); GPU: allocated memory, nothing to subtract
    out["loop_mb"] = out["loop_peak_mb"] - (0 if args.device.startswith("cuda") else baseline)
    print("BENCH " + json.dumps(out), flush=True)


def side(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--side", name, "--family", args.family, "--model", args.model,
           "--dataset", args.dataset, "--work", args.work, "--steps", str(args.steps),
           "--resolution", str(args.resolution), "--batch-size", str(args.batch_size), "--rank", str(args.rank),
           "--mixed-precision", args.mixed_precision, "--cache-dir", args.cache_dir, "--device", args.device]
    cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("BENCH ")]
    if done.returncode or not lines:
        raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][6:])


def flop_shares(family: str, k: int, lora_rank: int) -> dict:
    """Print each part's share of one training sample's FLOPs, full size vs the bench model; return
    the bench model's FLOPs."""
    print(f"  FLOPs per sample (meta-device count)     UNet step        VAE encode       text encode"
          "      caching bound")
    for label, scale in ((f"full size, {shaped_models.RESOLUTION}px", 1),
                         (f"bench model (/{k}), {shaped_models.resolution(k)}px", k)):
        f = shaped_models.flops(family, scale, rank=max(1, lora_rank // scale))
        total = sum(f.values())
        parts = "  ".join(f"{f[p] / 1e9:9.1f} GF {f[p] / total:4.0%}" for p in ("unet_step", "vae_encode", "text_encode"))
        print(f"  {label:38} {parts}   x{shaped_models.caching_bound(f):.2f}")
    print("  (caching bound: the throughput ratio if time were FLOPs: (UNet + VAE + text) / UNet)")
    return f


def gpu_peak_tflops() -> float:
    """Dense bf16/fp16 tensor-core peak of the GPU, from its name (vendor data sheets)."""
    import torch

    name = torch.cuda.get_device_name()
    for key, tflops in (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0)):
        if key in name:
            return tflops
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops")


def compare(family: str, args) -> None:
    k = args.scale
    args.family = family
    root = Path(args.work) / f"{family}-x{k}"
    args.resolution = shaped_models.resolution(k)
    args.rank = max(1, args.lora_rank // k)  # LoRA widths scale with the model's
    args.model = str(write_model(root / "model", family, k))
    args.dataset = str(write_dataset(root / "data", args.images, args.resolution))
    print(f"\n== {family} scaled /{k}: {args.images} images at {args.resolution}px, batch {args.batch_size}, "
          f"rank {args.rank}, {args.steps} steps, precision {args.mixed_precision}, gradient checkpointing "
          f"{'on' if args.gradient_checkpointing else 'off'}, "
          + ("1 CPU thread per side" if args.device == "cpu" else args.device))
    flops = flop_shares(family, k, args.lora_rank)
    # The machine is shared: alternate the sides, and per side keep the run with the fastest median step.
    args.cache_dir = str(root / f"cache-{time.time_ns()}")  # empty: the first run is really cold
    cold = side("loraflow", args)  # first run: fills the cache
    refs, warms = [], []
    for _ in range(args.repeats):
        refs.append(side("reference", args))
        warms.append(side("loraflow", args))  # cache reused, nothing encoded
    ref = min(refs, key=lambda r: r["step_s"])
    warm = min(warms, key=lambda r: r["step_s"])
    rows = [("reference (diffusers-style)", ref), ("loraflow, cold cache", cold), ("loraflow, warm cache", warm)]
    print(f"  {'':28} {'s/step':>12} {'loop MB':>8} {'peak RSS MB':>12} {'total s':>8} {'VAE calls':>10} "
          f"{'VAE+TE loaded':>14}")
    for label, r in rows:
        print(f"  {label:28} {r['step_s']:12.2f} {r['loop_mb']:8.0f} {r['max_rss_mb']:12.0f} {r['total_s']:8.1f} "
              f"{r['vae_calls']:10d} {'yes' if r['encoders_loaded'] else 'no':>14}")
    if args.device == "cpu":
        print("  (s/step: median CPU seconds of steps 2..N, one thread each, best of the repeats; loop MB: peak RSS"
              " of steps 2..N above the RSS after importing the libraries, the CPU analogue of"
              " torch.cuda.max_memory_allocated; peak RSS: whole run, loading included)")
    else:
        peak = args.peak_tflops or gpu_peak_tflops()
        print(f"  (s/step: median wall seconds of steps 2..N after a synchronize; loop MB: max_memory_allocated over "
              f"steps 2..N.) MFU at {peak:.0f} TFLOPS peak: reference "
              f"{sum(flops.values()) * args.batch_size / ref['step_s'] / peak / 1e12:.1%} (all its FLOPs), "
              f"loraflow {flops['unet_step'] * args.batch_size / warm['step_s'] / peak / 1e12:.1%}; "
              f"loraflow {args.batch_size / warm['step_s']:.2f} images/s")
    print("  every run, s/step: reference " + " ".join(f"{r['step_s']:.2f}" for r in refs)
          + f" | loraflow cold {cold['step_s']:.2f}, warm " + " ".join(f"{r['step_s']:.2f}" for r in warms))
    # Neighbouring runs see the same machine load: the ratio of each (reference, warm) pair, median over pairs.
    speed = sorted(r["step_s"] / w["step_s"] for r, w in zip(refs, warms))
    memory = [w["loop_mb"] / r["loop_mb"] for r, w in zip(refs, warms)]
    print(f"{family} loraflow (warm cache) vs reference, median of {len(speed)} adjacent pairs: "
          f"throughput x{statistics.median_high(speed):.2f} (pairs: {', '.join(f'{x:.2f}' for x in speed)}; "
          f"target >= 1.5); training-loop memory x{statistics.median_high(memory):.2f} (target <= 0.6); "
          f"whole-run peak RSS x{warm['max_rss_mb'] / ref['max_rss_mb']:.2f}; "
          f"end-to-end time x{warm['total_s'] / ref['total_s']:.2f}")
    print(f"{family} loraflow (cold cache, one run, caching included in end-to-end time): "
          f"throughput x{ref['step_s'] / cold['step_s']:.2f}, training-loop memory "
          f"x{cold['loop_mb'] / ref['loop_mb']:.2f}, end-to-end time x{cold['total_s'] / ref['total_s']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", nargs="+", default=["sdxl", "kolors"], choices=["sdxl", "kolors"])
    parser.add_argument("--scale", type=int, default=4, help="k: widths / k, pixels / k (a square: 4, 16)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--lora-rank", type=int, default=16, help="rank at full size; the bench uses rank / k")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="runs per side, alternating")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"])
    parser.add_argument("--device", default="cpu", help="cpu (one thread per side) or cuda (with --scale 1: "
                        "full-size SDXL / Kolors with random weights, reports MFU)")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense peak at the precision, for MFU "
                        "(default: from the device name, H100 SXM / H200 989 bf16, H100 PCIe 756)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="on both sides")
    parser.add_argument("--work", help="working folder (models, data, caches); default: a new temp folder")
    # one side, in a child process
    parser.add_argument("--side", choices=["loraflow", "reference"], help=argparse.SUPPRESS)
    for hidden in ("--model", "--dataset", "--cache-dir"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--resolution", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        args.family = args.family[0]
        return child(args)
    args.work = args.work or tempfile.mkdtemp(prefix="loraflow-bench-train-")
    for family in args.family:
        compare(family, args)


if __name__ == "__main__":
    main()
