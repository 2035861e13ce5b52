"""Storyboards: a story file (title, shared style and negative prompt, scenes) -> one image per
scene, a grid image and a `story.json` index. The tutorial's main job, as a command.

    title: 小猫穿越记
    style: 二次元                      # prefix added to every scene prompt
    negative_prompt: 丑陋,变形,嘈杂,模糊,低对比度
    defaults: {height: 1024, width: 1024, num_inference_steps: 50, guidance_scale: 4, seed: 0}
    loras: [models/anime.safetensors:0.8]
    grid: {columns: 2, width: 1024, height: 2048, captions: true}
    controlnets: {canny: models/controlnet-canny}   # weights per control type (optional)
    scenes:
      - {title: 现代小猫玩耍, prompt: "现代风格,一只橘色的小猫..."}
      - title: 小猫穿越
        prompt: "..."
        control: [{type: canny, image: "@previous", scale: 0.6}]  # keep the last panel's layout
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from loraflow.atomic import atomic_save_image, atomic_write_text
from loraflow.config import Options, opt
from loraflow.errors import ConfigError
from loraflow.generate.control.units import PREVIOUS, ControlUnit, parse_units
from loraflow.generate.options import GenerateConfig, ModelOptions, SamplingOptions
from loraflow.generate.session import GenerationSession, ProgressFn, save_results


class Scene(Options):
    title: str = opt("", "short name, used as the panel caption")
    description: str = opt("", "what happens (for people; not sent to the model)")
    prompt: str = opt(..., "scene prompt; the story's style is prepended")
    negative_prompt: str | None = opt(None, "overrides the story's negative prompt")
    seed: int | None = opt(None, "overrides the story's seed policy for this scene", ge=0)
    control: list[ControlUnit] = opt([], f"ControlNet units {{type, image, scale, start, end, model}}; "
                                         f"image {PREVIOUS} = the previous scene's picture")
    init_image: str | None = opt(None, f"img2img start image; {PREVIOUS} = the previous scene's picture")
    strength: float = opt(0.75, "img2img: how much to change init_image", aliases=("denoising_strength",),
                          ge=0.0, le=1.0)

    @field_validator("control", mode="before")
    @classmethod
    def _parse_units(cls, v):
        try:
            return parse_units(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def uses_previous(self) -> bool:
        return self.init_image == PREVIOUS or any(u.image == PREVIOUS for u in self.control)


class StoryDefaults(Options):
    height: int | None = opt(None, "panel height (family default when unset)", ge=64)
    width: int | None = opt(None, "panel width", ge=64)
    num_inference_steps: int | None = opt(None, "denoising steps", aliases=("steps",), ge=1)
    guidance_scale: float | None = opt(None, "CFG scale", aliases=("cfg_scale",))
    scheduler: str | None = opt(None, "sampler name", aliases=("sampler",))
    seed: int = opt(0, "base seed", ge=0)
    seed_policy: Literal["fixed", "increment"] = opt(
        "fixed", "fixed: every scene uses `seed` (as the tutorial); increment: scene i uses seed + i"
    )


class GridOptions(Options):
    columns: int = opt(2, "panels per row", ge=1)
    width: int | None = opt(1024, "final grid width in pixels (None keeps the natural size)")
    height: int | None = opt(2048, "final grid height in pixels")
    captions: bool = opt(False, "write each scene's title under its panel")
    font: str | None = opt(None, "TrueType font for captions (a CJK font for Chinese)")


class Story(Options):
    title: str = opt("", "story title")
    style: str = opt("", "prefix added to every scene prompt (style words, trigger word)", aliases=("prefix",))
    negative_prompt: str = opt("", "negative prompt shared by all scenes")
    model: str | None = opt(None, "model to use when the command line gives none")
    loras: list[str] = opt([], "LoRA file[:weight] applied to every scene", aliases=("lora",))
    controlnets: dict[str, str] = opt({}, "ControlNet weights per control type (canny: path), for scene "
                                          "units that name no model")
    defaults: StoryDefaults = Field(default_factory=StoryDefaults)
    grid: GridOptions = Field(default_factory=GridOptions)
    scenes: list[Scene] = Field(..., min_length=1)

    def scene_prompt(self, scene: Scene) -> str:
        if not self.style:
            return scene.prompt
        sep = "" if self.style.endswith((",", "，", " ")) else ","
        return f"{self.style}{sep}{scene.prompt}"


class StoryboardConfig(ModelOptions, SamplingOptions):
    """`loraflow storyboard STORY --out DIR`; flags override the story's defaults."""

    story: str = opt("", "story file (.yaml/.json)", cli=False)
    out: str = opt("outputs/story", "output folder", aliases=("output",))
    batch_size: int = opt(1, "scenes per pipeline call", ge=1, le=16)
    captions: bool | None = opt(None, "captions under each panel (overrides the story)")
    grid_width: int | None = opt(None, "final grid width (overrides the story)")
    grid_height: int | None = opt(None, "final grid height (overrides the story)")
    score: bool = opt(False, "score every panel (aesthetic and/or CLIP score) into story.json")
    best_of: int = opt(1, "render N seeds per scene (seed, seed+1, ...) and keep the best-scoring one", ge=1, le=64)
    best_of_metric: Literal["aesthetic", "clip"] = opt("aesthetic", "which score --best-of maximises")
    clip: str | None = opt(None, "local CLIP folder for CLIP scores (and for a bare aesthetic head)")
    aesthetic: str | None = opt(None, "local aesthetic predictor (folder or head file) for aesthetic scores")


def load_story(path: str | Path) -> Story:
    return Story.from_file(path)


def scene_configs(story: Story, cfg: StoryboardConfig) -> list[GenerateConfig]:
    """One GenerateConfig per scene: story values, then command-line overrides."""
    d = story.defaults
    loras = cfg.lora or story.loras
    items = []
    for i, scene in enumerate(story.scenes):
        seed = scene.seed if scene.seed is not None else (cfg.seed if cfg.seed is not None else d.seed)
        if scene.seed is None and d.seed_policy == "increment":
            seed += i
        items.append(GenerateConfig(
            model=cfg.model or story.model,
            prompt=story.scene_prompt(scene),
            negative_prompt=scene.negative_prompt if scene.negative_prompt is not None
            else (cfg.negative_prompt or story.negative_prompt),
            guidance_scale=cfg.guidance_scale if cfg.guidance_scale is not None else d.guidance_scale,
            num_inference_steps=cfg.num_inference_steps or d.num_inference_steps,
            height=cfg.height or d.height,
            width=cfg.width or d.width,
            seed=seed,
            scheduler=cfg.scheduler or d.scheduler,
            lora=loras,
            lora_dir=cfg.lora_dir,
            control=[u if u.model else u.model_copy(update={"model": story.controlnets.get(u.type)})
                     for u in scene.control],
            init_image=scene.init_image,
            strength=scene.strength,
        ))
    if story.scenes[0].uses_previous():
        raise ConfigError(f"scene 1 uses {PREVIOUS}, but there is no previous scene")
    return items


def with_previous(item: GenerateConfig, previous: Path) -> GenerateConfig:
    """`@previous` in a scene's references -> the file of the scene rendered before it."""
    def sub(image: str | None) -> str | None:
        return str(previous) if image == PREVIOUS else image

    control = [u.model_copy(update={"image": sub(u.image)}) for u in item.control]
    return item.model_copy(update={"control": control, "init_image": sub(item.init_image)})


def render_in_order(session: GenerationSession, items: list[GenerateConfig], out: Path,
                    progress: ProgressFn | None = None) -> list:
    """Scene by scene, each saved before the next, so `@previous` can read it."""
    results = []
    total = len(items)
    for k, item in enumerate(items):
        if k:
            item = with_previous(item, results[-1].path)
        step = (lambda done, n, k=k: progress(k * n + done, total * n)) if progress else None
        [result] = session.generate_many([item], progress=step)
        save_results([result], out, stem=f"scene-{k + 1:02d}")
        results.append(result)
    return results


def run_storyboard(cfg: StoryboardConfig, session: GenerationSession | None = None,
                   progress: ProgressFn | None = None, scorer=None, story: Story | None = None) -> dict:
    """Render every scene, the grid and story.json into `cfg.out`; returns the story.json dict.
    `story` is the story itself when it comes from Python rather than from the file `cfg.story`."""
    from loraflow.generate.grid import make_grid
    from loraflow.generate.story_scoring import load_scorer, pick_best_of, score_results

    story = story if story is not None else load_story(cfg.story)
    items = scene_configs(story, cfg)
    scorer = scorer or load_scorer(cfg)
    if session is None:
        session = GenerationSession.from_options(cfg.model_copy(update={"model": cfg.model or story.model}))
    out = Path(cfg.out)
    candidates: list[list[dict]] = [[] for _ in items]
    scores: list[dict | None] = [None] * len(items)
    if cfg.best_of > 1:
        results, scores, candidates = pick_best_of(session, items, out, cfg, scorer, progress)
    elif any(scene.uses_previous() for scene in story.scenes):
        results = render_in_order(session, items, out, progress)
    else:
        results = session.generate_many(items, batch_size=cfg.batch_size, progress=progress)
        for k, result in enumerate(results, start=1):
            save_results([result], out, stem=f"scene-{k:02d}")

    if scorer is not None and cfg.best_of == 1:
        scores = score_results(scorer, results, items)

    grid_opts = story.grid
    captions = cfg.captions if cfg.captions is not None else grid_opts.captions
    width = cfg.grid_width or grid_opts.width
    height = cfg.grid_height or grid_opts.height
    size = (width, height) if width and height else None
    grid = make_grid([r.image for r in results], grid_opts.columns, size,
                     [s.title or f"{k}" for k, s in enumerate(story.scenes, 1)] if captions else None, grid_opts.font)
    grid_path = out / "grid.png"
    atomic_save_image(grid, grid_path)
    index = {
        "title": story.title,
        "model": session.loaded.name,
        "family": session.family.name,
        "grid": grid_path.name,
        "grid_size": list(grid.size),
        "scenes": [
            {"index": k, "title": s.title, "description": s.description, "prompt": items[k - 1].prompt,
             "negative_prompt": items[k - 1].negative_prompt, "seed": r.seed, "file": r.path.name, "infotext": r.infotext,
             **({"scores": sc} if sc is not None else {}),
             **({"candidates": candidates[k - 1]} if candidates[k - 1] else {})}
            for k, (s, r, sc) in enumerate(zip(story.scenes, results, scores), start=1)
        ],
    }
    if scorer is not None:
        from loraflow.generate.story_scoring import summarize

        index["scores"] = summarize(scores)
    atomic_write_text(out / "story.json", json.dumps(index, ensure_ascii=False, indent=2))
    return index

