"""Do regions keep two characters apart? The two-character demo story (examples/stories/demo-two.yaml)
drawn by the demo model twice: with its `regions:`, and as the same story without them, whose scenes
name both characters in the prompt with the place words the demo model learnt ("{hero} on the left,
{friend} on the right, white background"). Each character is checked on the part of the panel where
the story puts it (its region's bounding box, as `story_scoring` scores a regioned character): the
demo checker must read the character's colour and shape there.

    python bench/story_regions.py [--seeds 3] [--steps 20] [--out outputs/story-regions]

Prints, per variant and character, the fraction of panels where it is right in its region (colour and
shape), the mean identity (1 = both, 0.5 = one), and both characters right at once, over --seeds base
seeds (scene i of base seed s uses seed 1000 * s + i).
"""
from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STORY = ROOT / "examples" / "stories" / "demo-two.yaml"
PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "full": "in the center"}  # the demo captions' place words (loraflow.demo.shapes.Scene.caption)


def without_regions(data: dict) -> dict:
    """The same story as its author would write it without regions: the characters, in the order of
    `regions:`, with their place words, in front of the scene prompt."""
    scenes = []
    for s in data["scenes"]:
        placed = ", ".join(f"{{{name}}} {PLACE[region]}" for name, region in s.get("regions", {}).items())
        scenes.append({**{k: v for k, v in s.items() if k != "regions"},
                       "prompt": ", ".join(p for p in (placed, s["prompt"]) if p)})
    return {**data, "scenes": scenes}


def measure(out: Path, panels) -> list[dict[str, float]]:
    """Identity of every regioned character in its region, per panel of the story in `out`. `panels` is a
    PanelScorer over the regioned story's casts, so both variants are looked at in the same places."""
    import json

    from PIL import Image

    index = json.loads((out / "story.json").read_text(encoding="utf-8"))
    rows = []
    for k, scene in enumerate(index["scenes"]):
        image = Image.open(out / scene["file"]).convert("RGB")
        [scores] = panels.score(k, [image], scene["prompt"])
        rows.append(scores["identity"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", default="outputs/story-regions")
    args = ap.parse_args()

    from loraflow.demo.identity import DemoIdentity
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.session import GenerationSession
    from loraflow.generate.story_scoring import PanelScorer
    from loraflow.generate.storyboard import StoryboardConfig, load_story, run_storyboard

    session = GenerationSession.from_options(GenerateConfig(device="cpu"))
    story = load_story(STORY)
    panels = PanelScorer(None, DemoIdentity(), story.panel_casts(), {"identity": 1.0, "text": 0.0, "aesthetic": 0.0})
    names = [c.name for c in story.characters]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plain = out / "no-regions.yaml"
    plain.write_text(yaml.safe_dump(without_regions(yaml.safe_load(STORY.read_text(encoding="utf-8"))),
                                    allow_unicode=True, sort_keys=False), encoding="utf-8")
    print(f"{len(story.scenes)} scenes x {args.seeds} seeds, {args.steps} steps; a character is right when the demo "
          f"checker reads its colour and shape in its region")
    print(f"{'variant':15s} {'character':9s} {'right':>7s} {'mean identity':>14s}")
    for variant, file in (("without regions", plain), ("with regions", STORY)):
        rows = []
        for s in range(args.seeds):
            folder = out / f"{variant.replace(' ', '-')}-{s}"
            run_storyboard(StoryboardConfig(story=str(file), out=str(folder), seed=1000 * s,
                                            num_inference_steps=args.steps, identity="none", batch_size=6),
                           session=session)
            rows += measure(folder, panels)
        for name in names:
            values = [r[name] for r in rows]
            right = sum(v == 1.0 for v in values)
            print(f"{variant:15s} {name:9s} {right:3d}/{len(values):<3d} {statistics.fmean(values):14.3f}")
        both = sum(all(v == 1.0 for v in r.values()) for r in rows)
        print(f"{variant:15s} {'both':9s} {both:3d}/{len(rows):<3d}")


if __name__ == "__main__":
    main()
