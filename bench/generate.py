"""Generation benchmark: loraflow vs a plain diffusers pipeline call, side by side, same model.

    python bench/generate.py [--family sdxl] [--size 128] [--steps 10] [--repeats 5]

Prints seconds per image for both and their ratio (loraflow / diffusers; ~1.0 means loraflow's
weighted encoding, LoRA handling and infotext cost nothing noticeable), then a storyboard of the
tutorial's 8 scenes with the prompt cache vs without it (text encoders run per scene).
Models are the in-process tiny ones (random weights): this measures overhead, not quality.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", default="sdxl", choices=("sd15", "sdxl", "kolors"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import torch

    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.session import GenerationSession
    from loraflow.generate.storyboard import StoryboardConfig, run_storyboard
    from loraflow.models.loading import load_pipeline

    torch.set_num_threads(2)
    loaded = load_pipeline(f"tiny:{args.family}", device="cpu", dtype="float32")
    pipe = loaded.pipe
    prompt = "a cute orange cat chasing a red ball in a cozy living room, anime style"
    negative = "lowres, low quality, worst quality, text, deformed"

    def plain():
        pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=args.steps, guidance_scale=5.0,
             height=args.size, width=args.size, generator=torch.Generator("cpu").manual_seed(0))

    session = GenerationSession(loaded)
    cfg = GenerateConfig(model="x", prompt=prompt, negative_prompt=negative, steps=args.steps, guidance_scale=5.0,
                         height=args.size, width=args.size, seed=0)

    def ours():
        session._prompt_cache.clear()  # fair: encode the prompt every call, as the plain call does
        session.generate(cfg)

    plain(), ours()  # warm-up
    p_best, p_med = best_of(plain, args.repeats)
    o_best, o_med = best_of(ours, args.repeats)
    print(f"model: tiny:{args.family}  {args.size}x{args.size}, {args.steps} steps, CPU, best of {args.repeats}")
    print(f"diffusers pipeline call : {p_best:.3f} s/image (median {p_med:.3f})")
    print(f"loraflow generate       : {o_best:.3f} s/image (median {o_med:.3f})")
    print(f"ratio loraflow/diffusers: {o_best / p_best:.2f}x time")

    story = ROOT / "examples" / "stories" / "cat-time-travel.zh.yaml"
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        sb = StoryboardConfig(story=str(story), out=out, steps=args.steps, height=args.size, width=args.size,
                              grid_width=256, grid_height=512)

        class NoCache(GenerationSession):
            def encode(self, prompts):
                self._prompt_cache.clear()
                return super().encode(prompts)

        cached, uncached = GenerationSession(loaded), NoCache(loaded)
        run_storyboard(sb, session=cached)  # warm-up
        cached._prompt_cache.clear()
        cached.encoder_calls = 0
        start = time.perf_counter()
        run_storyboard(sb, session=cached)
        t_cached = time.perf_counter() - start
        start = time.perf_counter()
        run_storyboard(sb, session=uncached)
        t_uncached = time.perf_counter() - start
    print(f"storyboard 8 scenes, prompt cache    : {t_cached:.2f} s ({cached.encoder_calls} prompt encodings)")
    print(f"storyboard 8 scenes, no prompt cache : {t_uncached:.2f} s ({uncached.encoder_calls} prompt encodings)")
    print(f"ratio cached/uncached: {t_cached / t_uncached:.2f}x time")


if __name__ == "__main__":
    main()
