"""A story file and the storyboard command's options: title, shared style and negative prompt,
scenes -> one `GenerateConfig` per scene. Only parsing and planning; `storyboard.py` renders.

    title: 小猫穿越记
    style: 二次元                      # prefix added to every scene prompt
    negative_prompt: 丑陋,变形,嘈杂,模糊,低对比度
    defaults: {height: 1024, width: 1024, num_inference_steps: 50, guidance_scale: 4, seed: 0}
    loras: [models/anime.safetensors:0.8]
    grid: {columns: 2, width: 1024, height: 2048, captions: true}
    controlnets: {canny: models/controlnet-canny}   # weights per control type (optional)
    characters: [{name: kitten, description: ...}]   # a cast: see cast.py
    scenes:
      - {title: 现代小猫玩耍, prompt: "现代风格,一只橘色的小猫..."}
      - title: 小猫穿越
        prompt: "..."
        control: [{type: canny, image: "@previous", scale: 0.6}]  # keep the last panel's layout
      - prompt: "两只动物在花园里玩耍"
        regions: {kitten: left, puppy: right}     # each character's words act only in its region
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from loraflow.config import Options, opt, parsed_before
from loraflow.errors import ConfigError
from loraflow.generate.cast import Character, PanelCast, cast_problem, resolve_cast
from loraflow.generate.control.units import PREVIOUS, ControlUnit, parse_units
from loraflow.generate.ip_references import MAX_REFERENCES
from loraflow.generate.options import GenerateConfig, ModelOptions, SamplingOptions
from loraflow.generate.regions import MAX_REGIONS, RegionPrompt, mask_problem


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
    regions: dict[str, str] = opt({}, "where each character is: {name: left|right|top|bottom|full or a mask "
                                      "image}; its words act only there (and it joins the scene's cast)",
                                  max_length=MAX_REGIONS)

    _parse_units = parsed_before("control", parse_units)

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


# What a character-sheet portrait adds after the character's words: the whole figure, facing the viewer,
# on a plain background, so that the LoRA trained on the picked portraits learns the character and not a scene.
SHEET_FRAMING = {"en": "full body portrait, standing, facing the viewer, plain background",
                 "zh": "全身像,站立,面向观众,纯色背景"}


class SheetOptions(Options):
    """`sheet:` in a story file: how `storyboard --character-sheet NAME` draws a character's candidates."""

    framing: str | dict[str, str] = opt(dict(SHEET_FRAMING), "words put after the character's words in every "
                                        "portrait: one string, or one per language ({en: ..., zh: ...})")
    candidates: int = opt(4, "portraits to render (seeds seed, seed+1, ...); --candidates overrides", ge=1, le=64)
    top: int | None = opt(None, "--use-sheet NAME without picks, on a scored sheet: train on the TOP best-scoring "
                                "candidates (default: the better half, rounded up)", ge=1)

    def framing_words(self, language: str) -> str:
        f = self.framing
        return f if isinstance(f, str) else f.get(language) or f.get("en") or next(iter(f.values()), "")


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
    ip_adapter: str | None = opt(None, "IP-Adapter (folder or file) through which characters with a "
                                       "reference_strength steer their panels")
    sheet: SheetOptions = Field(default_factory=SheetOptions)
    sheet_training: dict[str, Any] = opt({}, "options of `loraflow train` for --use-sheet's character LoRA "
                                             "(lora_rank, max_steps, learning_rate, resolution, ...)")
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
    ip_adapter: str | None = opt(None, "IP-Adapter for characters' reference_strength (overrides the story's)")
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


class SheetCommand(Options):
    """The storyboard flags that make or use a character sheet instead of rendering the whole story."""

    character_sheet: str | None = opt(None, "render candidate portraits of this character into OUT/sheets/NAME/ "
                                            "(nothing else is rendered)")
    candidates: int | None = opt(None, "portraits --character-sheet renders (default: the story's "
                                       "sheet.candidates, 4)", ge=1, le=64)
    use_sheet: str | None = opt(None, "NAME[:PICKS]: train a LoRA of NAME on its sheet's candidates PICKS "
                                      "(e.g. 1,3,4; default: all, or the best-scoring half of a scored sheet) "
                                      "and render the story with it")
    sheet_steps: int | None = opt(None, "--use-sheet: training steps (over the story's sheet_training)", ge=1)
    sheet_rank: int | None = opt(None, "--use-sheet: LoRA rank (over the story's sheet_training)", ge=1)
    sheet_learning_rate: float | None = opt(None, "--use-sheet: learning rate (over the story's sheet_training)",
                                            gt=0)

    @model_validator(mode="after")
    def _one_job(self):
        if self.character_sheet and self.use_sheet:
            raise ValueError("--character-sheet and --use-sheet are two steps; run one, then the other")
        return self

    def training_overrides(self) -> dict:
        """`loraflow train` options the flags set (they win over the story's `sheet_training`)."""
        given = {"max_steps": self.sheet_steps, "lora_rank": self.sheet_rank, "learning_rate": self.sheet_learning_rate}
        return {k: v for k, v in given.items() if v is not None}


def load_story(path: str | Path) -> Story:
    story = Story.from_file(path)
    problem = cast_problem(story.characters, story.scenes) or _mask_problem(story)
    if problem:
        raise ConfigError(f"{path}: {problem}")
    return story


def _mask_problem(story: Story) -> str | None:
    """The first region mask image of the story that cannot be read (before any panel is drawn)."""
    for k, scene in enumerate(story.scenes):
        for name, region in scene.regions.items():
            problem = mask_problem(region)
            if problem:
                return f"scenes[{k}].regions.{name}: {problem}"
    return None


def scene_configs(story: Story, cfg: StoryboardConfig) -> list[GenerateConfig]:
    """One GenerateConfig per scene: story values, then command-line overrides."""
    d = story.defaults
    loras = cfg.lora or story.loras
    items = []
    ip_adapter = cfg.ip_adapter or story.ip_adapter
    for i, (scene, cast) in enumerate(zip(story.scenes, story.panel_casts())):
        if len(cast.references) > MAX_REFERENCES:
            raise ConfigError(f"scenes[{i}]: its cast brings {len(cast.references)} steering references; at most "
                              f"{MAX_REFERENCES} per panel")
        if cast.references and not ip_adapter:
            raise ConfigError(f"scenes[{i}]: its cast steers with reference_strength, which needs an IP-Adapter: "
                              "set the story's ip_adapter or pass --ip-adapter")
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
            regions=[RegionPrompt(region=r.region, prompt=story.scene_prompt(scene, r.prompt)) for r in cast.regions],
            control=[u if u.model else u.model_copy(update={"model": story.controlnets.get(u.type)})
                     for u in scene.control],
            init_image=scene.init_image,
            strength=scene.strength,
            allow_pickle=cfg.allow_pickle,
            **({"ip_adapter": ip_adapter, "reference": list(cast.references)} if cast.references else {}),
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
