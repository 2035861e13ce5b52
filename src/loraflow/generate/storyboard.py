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

from loraflow.atomic import atomic_save_image, atomic_write_text, check_outputs_apart
from loraflow.config import Options, opt
from loraflow.errors import ConfigError
from loraflow.generate.cast import Character, PanelCast, cast_problem, resolve_cast
from loraflow.generate.control.units import PREVIOUS, ControlUnit, parse_units
from loraflow.generate.options import GenerateConfig, ModelOptions, SamplingOptions
from loraflow.generate.session import GenerationSession, ProgressFn, save_results


MAX_GRID_SIDE = 16384  # pixels; a 16384² RGB grid is 768 MB, a 100000² one would need 28 GB


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
    cast: list[str] = opt([], "characters in this scene (names from the story's `characters`); "
                              "{name} in the prompt also brings one in")

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
    height: int | None = opt(None, "panel height (family default when unset; a multiple of 8)", ge=64)
    width: int | None = opt(None, "panel width (a multiple of 8)", ge=64)
    num_inference_steps: int | None = opt(None, "denoising steps", aliases=("steps",), ge=1)
    guidance_scale: float | None = opt(None, "CFG scale", aliases=("cfg_scale",))
    scheduler: str | None = opt(None, "sampler name", aliases=("sampler",))
    seed: int = opt(0, "base seed", ge=0)
    seed_policy: Literal["fixed", "increment"] = opt(
        "fixed", "fixed: every scene uses `seed` (as the tutorial); increment: scene i uses seed + i"
    )

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, v):  # the VAE works on 8x8 pixel blocks, as GenerateConfig checks
        if v is not None and v % 8:
            raise ValueError(f"must be a multiple of 8, got {v}")
        return v


class GridOptions(Options):
    columns: int = opt(2, "panels per row", ge=1, le=64)
    width: int | None = opt(1024, "final grid width in pixels (None keeps the natural size)", ge=1, le=MAX_GRID_SIDE)
    height: int | None = opt(2048, "final grid height in pixels", ge=1, le=MAX_GRID_SIDE)
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
    characters: list[Character] = opt([], "the cast: {name, description, references, lora, lora_weight, trigger}")
    language: str | None = opt(None, "which description of each character scenes use (default: zh for a "
                                     "prompt with Chinese characters, else en)")
    scenes: list[Scene] = Field(..., min_length=1)

    def scene_prompt(self, scene: Scene, prompt: str | None = None) -> str:
        """The style prefix + `prompt` (default: the scene's own prompt)."""
        prompt = scene.prompt if prompt is None else prompt
        if not self.style:
            return prompt
        sep = "" if self.style.endswith((",", "，", " ")) else ","
        return f"{self.style}{sep}{prompt}"

    def panel_casts(self) -> list[PanelCast]:
        return [resolve_cast(self.characters, scene, k, self.language) for k, scene in enumerate(self.scenes)]


class StoryboardConfig(ModelOptions, SamplingOptions):
    """`loraflow storyboard STORY --out DIR`; flags override the story's defaults."""

    story: str = opt("", "story file (.yaml/.json)", cli=False)
    out: str = opt("outputs/story", "output folder", aliases=("output",))
    batch_size: int = opt(1, "scenes per pipeline call", ge=1, le=16)
    captions: bool | None = opt(None, "captions under each panel (overrides the story)")
    grid_width: int | None = opt(None, "final grid width (overrides the story)", ge=1, le=MAX_GRID_SIDE)
    grid_height: int | None = opt(None, "final grid height (overrides the story)", ge=1, le=MAX_GRID_SIDE)
    score: bool = opt(False, "score every panel (aesthetic and/or CLIP score) into story.json")
    best_of: int = opt(1, "render N seeds per scene (seed, seed+1, ...) and keep the best-scoring one", ge=1, le=64)
    best_of_metric: Literal["combined", "identity", "aesthetic", "clip"] = opt(
        "combined", "which score --best-of maximises (combined: weighted mean of identity, text and aesthetic)")
    clip: str | None = opt(None, "local CLIP folder for CLIP scores (and for a bare aesthetic head)")
    aesthetic: str | None = opt(None, "local aesthetic predictor (folder or head file) for aesthetic scores")
    identity: Literal["auto", "clip", "demo", "none"] = opt(
        "auto", "how each character's identity is scored: clip (CLIP-I cosine against its references or first "
                "panel, needs --clip), demo (the demo checker: colour and shape); auto: demo on the demo model, "
                "clip when --clip is given")
    identity_weight: float = opt(1.0, "weight of identity in the combined score", ge=0.0)
    text_weight: float = opt(1.0, "weight of the CLIP score / 100 in the combined score", ge=0.0)
    aesthetic_weight: float = opt(1.0, "weight of the aesthetic score / 10 in the combined score", ge=0.0)
    repair: bool = opt(False, "re-render panels whose combined score is under --repair-threshold, new seeds each")
    repair_threshold: float = opt(0.5, "combined score (0..1) a panel must reach under --repair", ge=0.0, le=1.0)
    repair_budget: int = opt(8, "most re-renders --repair may spend on the whole story", ge=1)

    def score_weights(self) -> dict[str, float]:
        return {"identity": self.identity_weight, "text": self.text_weight, "aesthetic": self.aesthetic_weight}


def load_story(path: str | Path) -> Story:
    story = Story.from_file(path)
    problem = cast_problem(story.characters, story.scenes)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return story


def scene_configs(story: Story, cfg: StoryboardConfig) -> list[GenerateConfig]:
    """One GenerateConfig per scene: story values, then command-line overrides."""
    d = story.defaults
    loras = cfg.lora or story.loras
    items = []
    for i, (scene, cast) in enumerate(zip(story.scenes, story.panel_casts())):
        seed = scene.seed if scene.seed is not None else (cfg.seed if cfg.seed is not None else d.seed)
        if scene.seed is None and d.seed_policy == "increment":
            seed += i
        items.append(GenerateConfig(
            model=cfg.model or story.model,
            prompt=story.scene_prompt(scene, cast.prompt),
            negative_prompt=scene.negative_prompt if scene.negative_prompt is not None
            else (cfg.negative_prompt or story.negative_prompt),
            guidance_scale=cfg.guidance_scale if cfg.guidance_scale is not None else d.guidance_scale,
            num_inference_steps=cfg.num_inference_steps or d.num_inference_steps,
            height=cfg.height or d.height,
            width=cfg.width or d.width,
            seed=seed,
            scheduler=cfg.scheduler or d.scheduler,
            lora=[*loras, *cast.loras],
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


def _check_before_rendering(cfg: StoryboardConfig, story: Story, items: list[GenerateConfig]) -> None:
    """What would fail after every panel is drawn fails now: a caption font that is no font, and any
    panel, grid or index written over a file the story reads (a re-run into the folder whose
    scene-01.png is the next story's init image would destroy it)."""
    from loraflow.generate.grid import find_font

    if story.grid.font and (cfg.captions if cfg.captions is not None else story.grid.captions):
        find_font(12, story.grid.font)
    out = Path(cfg.out)
    outputs = [out / f"scene-{k:02d}.png" for k in range(1, len(items) + 1)] + [out / "grid.png", out / "story.json"]
    inputs: dict[str, str | None] = {"story": cfg.story, "grid.font": story.grid.font}
    for k, item in enumerate(items):
        inputs[f"scenes.{k}.init_image"] = None if item.init_image == PREVIOUS else item.init_image
        inputs[f"scenes.{k}.mask"] = item.mask
        inputs.update({f"scenes.{k}.control.{j}.image": u.image for j, u in enumerate(item.control) if u.image != PREVIOUS})
    check_outputs_apart(outputs, inputs, "storyboard")


def render_all(session: GenerationSession, story: Story, items: list[GenerateConfig], out: Path,
               cfg: StoryboardConfig, progress: ProgressFn | None = None) -> list:
    """One render per scene: batched, or in order when a scene reads the previous panel."""
    if any(scene.uses_previous() for scene in story.scenes):
        return render_in_order(session, items, out, progress)
    results = session.generate_many(items, batch_size=cfg.batch_size, progress=progress)
    for k, result in enumerate(results, start=1):
        save_results([result], out, stem=f"scene-{k:02d}")
    return results


def run_storyboard(cfg: StoryboardConfig, session: GenerationSession | None = None,
                   progress: ProgressFn | None = None, scorer=None, identity=None,
                   story: Story | None = None) -> dict:
    """Render every scene, the grid and story.json into `cfg.out`; returns the story.json dict.
    `scorer` / `identity` replace the ones the options would load (`identity`: an IdentityScorer);
    `story` is the story itself when it comes from Python rather than from the file `cfg.story`."""
    from loraflow.generate import story_scoring as scoring

    story = story if story is not None else load_story(cfg.story)
    casts = story.panel_casts()
    items = scene_configs(story, cfg)
    _check_before_rendering(cfg, story, items)
    panels = scoring.panel_scorer(cfg, casts, scorer, identity)
    if session is None:
        session = GenerationSession.from_options(cfg.model_copy(update={"model": cfg.model or story.model}))
    out = Path(cfg.out)
    candidates: list[list[dict]] = [[] for _ in items]
    scores: list[dict | None] = [None] * len(items)
    if cfg.best_of > 1:
        results, scores, candidates = scoring.pick_best_of(session, items, out, cfg, panels, progress)
    else:
        results = render_all(session, story, items, out, cfg, progress)
        if panels is not None:
            scores = scoring.score_in_order(panels, results, items)
    repaired = scoring.repair(session, items, results, scores, out, cfg, panels) if cfg.repair else None

    index = story_index(story, session, items, casts, results, scores, candidates, write_grid(story, cfg, results, out))
    if panels is not None:
        from loraflow.generate.contact_sheet import write_contact_sheet

        index["scores"] = scoring.summarize(scores)
        if panels.identity is not None:
            index["identity"] = {"scorer": panels.identity.name, "anchors": dict(panels.anchored_by)}
        index["contact_sheet"] = write_contact_sheet(out, index, [r.image for r in results])
    if repaired is not None:
        index["repair"] = repaired
    atomic_write_text(out / "story.json", json.dumps(index, ensure_ascii=False, indent=2))
    return index


def write_grid(story: Story, cfg: StoryboardConfig, results: list, out: Path):
    from loraflow.generate.grid import make_grid

    grid_opts = story.grid
    captions = cfg.captions if cfg.captions is not None else grid_opts.captions
    width = cfg.grid_width or grid_opts.width
    height = cfg.grid_height or grid_opts.height
    size = (width, height) if width and height else None
    grid = make_grid([r.image for r in results], grid_opts.columns, size,
                     [s.title or f"{k}" for k, s in enumerate(story.scenes, 1)] if captions else None, grid_opts.font)
    atomic_save_image(grid, out / "grid.png")
    return grid


def story_index(story: Story, session: GenerationSession, items, casts, results, scores, candidates, grid) -> dict:
    """story.json: per scene the resolved prompt, LoRAs and cast (words, LoRA, references), seed, file, scores."""
    def scene(k: int, s: Scene) -> dict:
        item, cast, r, sc = items[k], casts[k], results[k], scores[k]
        return {"index": k + 1, "title": s.title, "description": s.description, "prompt": item.prompt,
                "negative_prompt": item.negative_prompt, "loras": list(item.lora), "seed": r.seed, "file": r.path.name,
                "infotext": r.infotext,
                **({"cast": cast.to_json(), "references": [p for c in cast.members for p in c.references]}
                   if cast.members else {}),
                **({"scores": sc} if sc is not None else {}),
                **({"candidates": candidates[k]} if candidates[k] else {})}

    return {"title": story.title, "model": session.loaded.name, "family": session.family.name, "grid": "grid.png",
            "grid_size": list(grid.size), "scenes": [scene(k, s) for k, s in enumerate(story.scenes)]}
