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

        encode_seconds = [0.0]
        family_encode = loaded.family.encode_prompts

        def timed_encode(pipe_, prompts_):  # time spent inside the text encoders
            start_ = time.perf_counter()
            out_ = family_encode(pipe_, prompts_)
            encode_seconds[0] += time.perf_counter() - start_
            return out_

        loaded.family.encode_prompts = timed_encode
        cached, uncached = GenerationSession(loaded), NoCache(loaded)
        run_storyboard(sb, session=cached)  # warm-up
        cached._prompt_cache.clear()
        def timed_story(session):
            session._prompt_cache.clear()
            session.encoder_calls = 0
            encode_seconds[0] = 0.0
            start_ = time.perf_counter()
            run_storyboard(sb, session=session)
            return time.perf_counter() - start_, encode_seconds[0], session.encoder_calls

        runs = {"cached": [], "uncached": []}
        for _ in range(max(1, args.repeats)):  # alternate the two, best of N each
            runs["cached"].append(timed_story(cached))
            runs["uncached"].append(timed_story(uncached))
        (t_cached, e_cached, n_cached), (t_uncached, e_uncached, n_uncached) = min(runs["cached"]), min(runs["uncached"])
        loaded.family.encode_prompts = family_encode
    print(f"storyboard 8 scenes, prompt cache    : {t_cached:.2f} s, {e_cached:.3f} s in text encoders "
          f"({n_cached} prompt encodings)")
    print(f"storyboard 8 scenes, no prompt cache : {t_uncached:.2f} s, {e_uncached:.3f} s in text encoders "
          f"({n_uncached} prompt encodings)")
    print(f"ratio cached/uncached: {t_cached / t_uncached:.2f}x total time, "
          f"{e_cached / e_uncached:.2f}x text-encoder time (tiny encoders: the real ChatGLM-6B / CLIP-bigG "
          "make text encoding a much larger share)")


if __name__ == "__main__":
    main()
