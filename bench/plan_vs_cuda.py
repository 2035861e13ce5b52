"""The planner against the device: planned training-step peak vs `torch.cuda.max_memory_allocated`,
and the efficiency factor (achieved / peak TFLOPs) measured from the step time. For a session with
a GPU (not run on the CPU machine this was written on); target: plan within +-15 %.

Full-size SDXL / Kolors UNets with random weights (built from the shipped configs on the GPU, so no
download), LoRA rank 16 through `prepare_unet`, the step through the planner's own `train_step`
(trainer.micro_batch_loss + optimizer_step on device tensors) under `torch.autocast`, as
accelerate runs it. The first step creates the optimizer state; steps 2..N are measured.

    python bench/plan_vs_cuda.py [--family sdxl kolors] [--steps 6] [--gpu H100]
    python bench/plan_vs_cuda.py --device cpu --model tiny:sdxl --resolution 64   # a smoke run, no GPU
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from types import SimpleNamespace

GiB = 1024 ** 3


def measure(config, device: str, steps: int) -> tuple[int, float]:
    """(peak bytes over steps 2..N, median seconds per step) of the real step on `device`."""
    import torch

    from loraflow.plan.accountant import MemoryAccountant
    from loraflow.plan.architecture import resolve_architecture
    from loraflow.train.plan import train_step
    from loraflow.train.model_setup import WEIGHT_DTYPES, TrainModel, prepare_unet
    from loraflow.train.optim import make_optimizer

    cuda = device.startswith("cuda")
    acct = None if cuda else MemoryAccountant("cpu")  # on a CPU the accountant is the measurement
    dtype = getattr(torch, WEIGHT_DTYPES[config.mixed_precision])
    arch = resolve_architecture(config.model, config.family)
    with acct or torch.device(device):  # noqa: SIM117 (the accountant only on a CPU)
        with torch.device(device):  # random weights (a tiny model is built on the CPU, then moved)
            unet = arch.builders["unet"]().to(device, dtype).requires_grad_(False)
        scheduler = arch.family.noise_scheduler()
        model = TrainModel(SimpleNamespace(unet=unet), arch.family, arch.source, arch.source, None, dtype, scheduler,
                           scheduler.config.prediction_type)
        prepare_unet(model, config)
        params = model.trainable_parameters()
        optimizer = make_optimizer(params, config, device)
        resolution = config.resolution or arch.family.defaults.height
        shape = (config.batch_size, unet.config.in_channels, resolution // 8, resolution // 8)
        autocast = torch.autocast(device.split(":")[0], dtype=dtype, enabled=config.mixed_precision != "no")
        times = []
        for i in range(steps):
            if i == 1:
                torch.cuda.reset_peak_memory_stats() if cuda else acct.reset_peak()
            started = time.perf_counter()
            with autocast:
                train_step(model, config, optimizer, params, shape, device)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        peak = torch.cuda.max_memory_allocated() if cuda else acct.peak
    return peak, statistics.median(times[1:])


def main(argv=None) -> int:
    from loraflow.plan.gpus import find_gpu
    from loraflow.train.plan import plan_train
    from loraflow.train.config import TrainConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", default=["sdxl", "kolors"])
    parser.add_argument("--model", help="a model instead of the families' shipped configs (tiny:sdxl for a smoke run)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gpu", default="H100", help="peak TFLOPs of this card calibrate the efficiency")
    args = parser.parse_args(argv)
    gpu = find_gpu(args.gpu)
    families = [None] if args.model else args.family
    print(f"{'run':<34}{'planned GiB':>12}{'measured GiB':>13}{'plan/meas':>10}{'s/step':>8}{'TFLOP':>7}{'MFU':>6}")
    for family in families:
        for ckpt in (False, True):
            source = {"model": args.model} if args.model else {"family": family}
            config = TrainConfig(**source, dataset="unused", resolution=args.resolution, batch_size=1, lora_rank=16,
                                 mixed_precision="bf16", gradient_checkpointing=ckpt, device=args.device)
            plan = plan_train(config)
            planned = next(p.peak_bytes for p in plan.phases if p.name == "training step")
            measured, seconds = measure(config, args.device, args.steps)
            mfu = plan.flops_per_step / seconds / (gpu.tflops * 1e12) if gpu.tflops else float("nan")
            label = f"{family or args.model}{' ckpt' if ckpt else ''}"
            print(f"{label:<34}{planned / GiB:12.3f}{measured / GiB:13.3f}{planned / measured:10.2f}"
                  f"{seconds:8.3f}{plan.flops_per_step / 1e12:7.1f}{mfu:6.2f}")
    print(f"MFU is against {gpu.name}'s {gpu.tflops} TFLOPs: use it as `loraflow plan --efficiency`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
