"""Does a cast keep the hero the same? The demo story (examples/stories/demo-cast.yaml) drawn twice by
the demo model: with its cast, and as a story without one, whose scenes can only say "the hero"
(`{hero}` -> "the hero", words the model never learnt). Every panel is scored with the demo checker
against the character's definition (colour and shape).

    python bench/story_identity.py [--seeds 5] [--steps 20] [--out outputs/story-identity]

Prints, per variant, the mean identity (1 = colour and shape right, 0.5 = one of them), the
fraction of panels that show the character exactly, and self-consistency (the fraction of a
character's panels that show its most common colour and shape, whatever the definition), over
--seeds base seeds.
"""
from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STORY = ROOT / "examples" / "stories" / "demo-cast.yaml"


def without_cast(data: dict) -> dict:
    """The same story as its author would write it with no cast: `{name}` becomes "the name"."""
    out = {k: v for k, v in data.items() if k != "characters"}
    out["scenes"] = [{**s, "prompt": re.sub(r"\{(\w+)\}", r"the \1", s["prompt"]), "cast": []} for s in data["scenes"]]
    return out


def run(story_file: Path, out: Path, seed: int, steps: int, session, casts: list) -> tuple[list[float], float]:
    from loraflow.generate.storyboard import StoryboardConfig, run_storyboard

    run_storyboard(StoryboardConfig(story=str(story_file), out=str(out), seed=seed, num_inference_steps=steps,
                                    identity="none", batch_size=8), session=session)
    return measure(out, casts)


def measure(out: Path, casts: list) -> tuple[list[float], float]:
    """(identity of every character panel, self-consistency) of the panels in `out`."""
    import json
    from collections import Counter

    from PIL import Image

    from loraflow.demo.checker import read_image
    from loraflow.demo.identity import DemoIdentity

    index = json.loads((out / "story.json").read_text(encoding="utf-8"))
    scores, seen = [], {}
    for scene, cast in zip(index["scenes"], casts):  # the cast story's characters, whatever the prompt said
        image = Image.open(out / scene["file"]).convert("RGB")
        reading = read_image(image)
        for c in cast.members:
            scores.append(DemoIdentity().identity([image], c, None)[0])
            seen.setdefault(c.name, []).append((reading.colour, reading.shape))
    same = sum(Counter(looks).most_common(1)[0][1] for looks in seen.values())
    return scores, same / sum(len(looks) for looks in seen.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="outputs/story-identity")
    args = ap.parse_args()

    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.session import GenerationSession
    from loraflow.generate.storyboard import load_story

    session = GenerationSession.from_options(GenerateConfig(device="cpu"))
    story = load_story(STORY)
    casts = story.panel_casts()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain = out / "no-cast.yaml"
    plain.write_text(yaml.safe_dump(without_cast(yaml.safe_load(STORY.read_text(encoding="utf-8"))),
                                    allow_unicode=True), encoding="utf-8")
    for name, file in (("without cast", plain), ("with cast", STORY)):
        values, consistency = [], []
        for seed in range(args.seeds):
            scores, same = run(file, out / f"{name.replace(' ', '-')}-{seed}", seed, args.steps, session, casts)
            values += scores
            consistency.append(same)
        exact = sum(v == 1.0 for v in values) / len(values)
        print(f"{name:13s} mean identity {statistics.fmean(values):.3f}  panels showing the character "
              f"{exact:.3f}  self-consistency {statistics.fmean(consistency):.3f}  "
              f"({len(values)} panels, {args.seeds} seeds, {args.steps} steps)")


if __name__ == "__main__":
    main()
