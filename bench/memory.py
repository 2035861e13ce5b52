"""Peak GPU memory at full size, planned on the meta device (`loraflow plan`), side by side as ratios.

1024 x 1024, batch 1, LoRA rank 16 on to_q/k/v/out, bf16, SDXL and Kolors. Training as
  loraflow           caches latents and text embeddings, then releases the VAE and text encoders
                     (the cache pass is a phase of its own; the peak is the larger of the two)
  diffusers script   train_text_to_image_lora_sdxl.py: text encoders and the VAE resident (VAE in
                     fp32, as the script keeps it without a fp16-fix VAE), both run every step
  DiffSynth 1.x      train_kolors_lora.py (the tutorial's run): weights in fp16 ("16-mixed"),
                     ChatGLM resident in fp16, prompts and images encoded every step, gradient
                     checkpointing on (--use_gradient_checkpointing)
and generation at 1024 x 1024, 50 steps, with and without offload. Nothing here ran on a GPU: these
are planner figures; bench/plan_vs_cuda.py checks the planner against torch.cuda on a lent GPU.

    python bench/memory.py [--family sdxl kolors] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

GiB = 1024 ** 3


def train_rows(family: str) -> list[tuple[str, object]]:
    from loraflow.train.plan import Workload, plan_train
    from loraflow.train.config import TrainConfig

    base = dict(family=family, dataset="unused", resolution=1024, batch_size=1, lora_rank=16, lora_targets="attn",
                mixed_precision="bf16")

    def cfg(**kw):
        return TrainConfig(**{**base, **kw})

    script = Workload(vae_in_loop=True, text_in_loop=True, encoders_resident=True, vae_dtype="float32")
    # the tutorial trains with sdxl-vae-fp16-fix: the VAE runs in fp16
    diffsynth = Workload(vae_in_loop=True, text_in_loop=True, encoders_resident=True, text_dtype="float16",
                         vae_dtype="float16")
    rows = [
        ("loraflow", plan_train(cfg())),
        ("loraflow, checkpointing", plan_train(cfg(gradient_checkpointing=True))),
        ("loraflow, ckpt + offload", plan_train(cfg(gradient_checkpointing=True, offload_activations=True))),
        ("loraflow, text encoders on CPU", plan_train(cfg(text_encoders_on_cpu=True))),
        ("loraflow, + recompute ff", plan_train(cfg(text_encoders_on_cpu=True, recompute="ff"))),
        ("loraflow, + recompute ff+cross", plan_train(cfg(text_encoders_on_cpu=True, recompute="ff+cross"))),
        ("loraflow, + offload activations", plan_train(cfg(text_encoders_on_cpu=True, offload_activations=True))),
        ("loraflow, + checkpointing", plan_train(cfg(text_encoders_on_cpu=True, gradient_checkpointing=True))),
        ("loraflow, + fp8 base + ckpt", plan_train(cfg(text_encoders_on_cpu=True, gradient_checkpointing=True,
                                                       base_fp8=True))),
        ("diffusers script", plan_train(cfg(), script)),
        ("diffusers script, ckpt", plan_train(cfg(gradient_checkpointing=True), script)),
    ]
    if family == "kolors":  # DiffSynth-Studio's trainer of this kind is Kolors'
        rows.append(("DiffSynth 1.x style", plan_train(cfg(mixed_precision="fp16", gradient_checkpointing=True),
                                                       diffsynth)))
    from loraflow.plan.modes import TRAIN_STEPS, budget_from_vram, choose, flags

    for vram in (12, 8, 6):
        chosen, plan, changes = choose(cfg(), budget_from_vram(vram), plan_train, TRAIN_STEPS)
        rows.append((f"--vram {vram}: {flags(changes) or 'as is'}".replace("--text-encoders-on-cpu", "--te-cpu")
                     .replace("--optimizer ", "").replace("--gradient-checkpointing", "--ckpt")
                     .replace("--offload-activations", "--offload"), plan))
    return rows


def generate_rows(family: str) -> list[tuple[str, object]]:
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.plan import plan_generate

    base = dict(family=family, height=1024, width=1024, num_inference_steps=50, dtype="bfloat16")
    return [(label, plan_generate(GenerateConfig(**base, **kw))) for label, kw in (
        ("generate, all resident", {}),
        ("generate, encoders on CPU + VAE tiling", {"offload": "encoders", "vae_tiling": True}),
        ("generate, model offload + VAE tiling", {"offload": "model", "vae_tiling": True}),
    )]


def step_phase(plan, name: str) -> int:
    return next((p.peak_bytes for p in plan.phases if p.name == name), 0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", nargs="+", default=["sdxl", "kolors"])
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    from loraflow.quiet import silence_third_party

    silence_third_party()  # the library notices the CLI hides (dtype casts of meta models)
    out = []
    for family in args.family:
        started = time.time()
        rows = train_rows(family)
        reference = next(plan for label, plan in rows if label.startswith("diffusers script")).peak_bytes
        diffsynth = next((plan for label, plan in rows if label.startswith("DiffSynth")), None)
        diffsynth = diffsynth.peak_bytes if diffsynth else None  # DiffSynth's trainer of this kind is Kolors' only
        print(f"\n{family}: training, 1024^2, batch 1, rank 16, bf16 (planned on meta; no GPU)")
        print(f"  {'run':<52}{'peak GiB':>9}{'step GiB':>9}{'x script':>9}{'x DiffSynth':>12}{'TFLOP':>8}")
        for label, plan in rows:
            print(f"  {label:<52}{plan.peak_bytes / GiB:9.2f}{step_phase(plan, 'training step') / GiB:9.2f}"
                  f"{plan.peak_bytes / reference:9.2f}"
                  f"{f'{plan.peak_bytes / diffsynth:12.2f}' if diffsynth else '-':>12}"
                  f"{plan.flops_per_step / 1e12:8.1f}")
            out.append({"family": family, "run": label, **plan.to_dict()})
        gen = generate_rows(family)
        resident = gen[0][1].peak_bytes
        print(f"{family}: generation, 1024^2, 50 steps, bf16")
        for label, plan in gen:
            print(f"  {label:<52}{plan.peak_bytes / GiB:9.2f}{'':9}{plan.peak_bytes / resident:9.2f}"
                  f"{'':12}{plan.flops_per_image / 1e12:8.0f}")
            out.append({"family": family, "run": label, **plan.to_dict()})
        print(f"  ({time.time() - started:.0f} s of planning)", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
