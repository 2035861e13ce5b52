"""loraflow from Python: load a model once, then draw pictures and stories.

    import loraflow
    pipe = loraflow.load()                                   # no model: the bundled demo model
    images = pipe.generate("a red circle on the left, white background", seed=0, num_images=4)
    images[0].info["parameters"]                             # A1111 infotext of the first picture
    board = pipe.storyboard("examples/stories/demo-shapes.yaml", out="outputs/story")
    board.grid, board.panels, board.record                   # PIL grid, PIL panels, story.json

The keyword arguments are the options of `loraflow generate` / `loraflow storyboard` (their names,
or aliases such as `steps` and `cfg_scale`), validated by the same typed `Options` classes: a bad
one raises the command's one-line `loraflow.errors.ConfigError`, naming the key. The work is done by
the same plain functions the commands call (`GenerationSession`, `run_storyboard`).

This module sits at the top of the layer order, beside the command shells: it only translates
Python calls into those functions. Training, scoring and the data steps have their own modules
(`loraflow.train.api`, `loraflow.score.api`, `loraflow.data.api`).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraflow.errors import ConfigError
from loraflow.generate.options import GenerateConfig, ModelOptions
from loraflow.generate.storyboard import Story, StoryboardConfig
from loraflow.progress import ProgressFn, progress_for
from loraflow.generate.grid import make_grid
from loraflow.generate.session import GenerationSession, save_results
from loraflow.generate.storyboard import load_story, run_storyboard
from loraflow.models.loading import DEMO

__all__ = ["load", "storyboard", "plan", "Session", "Images", "Storyboard"]

LoraArg = str | Path | tuple[str | Path, float]


def lora_args(loras: LoraArg | Iterable[LoraArg] | dict | None) -> list[str]:
    """`loras=` as a file, `FILE:WEIGHT`, (file, weight) pairs or {file: weight} -> option strings."""
    if loras is None:
        return []
    if isinstance(loras, dict):
        loras = list(loras.items())
    elif isinstance(loras, (str, Path, tuple)):
        loras = [loras]
    out = []
    for item in loras:
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ConfigError(f"key 'loras': expected (file, weight), got {item!r}")
            out.append(f"{item[0]}:{float(item[1])}")
        else:
            out.append(str(item))
    return out


def _with_infotext(image, infotext: str):
    """The PIL image with its A1111 text where PIL readers expect it (`Image.open(png).info` has it too)."""
    image.info["parameters"] = infotext
    return image


@dataclass
class Images:
    """Pictures from `Session.generate`: a list of PIL images, each with `info["parameters"]` (its
    A1111 infotext). In Jupyter it shows as one picture (a grid of them). `save(folder)` writes PNGs
    that keep the infotext (PIL's own `image.save` would drop it)."""

    results: list  # loraflow.generate.session.ImageResult: image, seed, infotext, params, path

    @property
    def images(self) -> list:
        return [_with_infotext(r.image, r.infotext) for r in self.results]

    @property
    def infotexts(self) -> list[str]:
        return [r.infotext for r in self.results]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.results]

    @property
    def paths(self) -> list[Path | None]:
        return [r.path for r in self.results]

    def __len__(self) -> int:
        return len(self.results)

    def __getitem__(self, index: int):
        return self.images[index]

    def __iter__(self):
        return iter(self.images)

    def save(self, out: str | Path) -> list[Path]:
        """PNGs numbered as A1111 numbers them (`00012-1234.png`), infotext included."""
        return save_results(self.results, out)

    def grid(self, columns: int | None = None):
        return make_grid([r.image for r in self.results], columns or min(4, len(self.results)))

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.grid().save(buffer, format="PNG")
        return buffer.getvalue()


@dataclass
class Storyboard:
    """A rendered story: `panels` (PIL, with infotext), `grid` (PIL), `record` (the story.json dict,
    with scores when asked for) and `out` (the folder holding scene-NN.png, grid.png, story.json)."""

    out: Path
    record: dict

    @property
    def panels(self) -> list:
        from PIL import Image

        # read back from the files, so what you see is exactly what was written (infotext included)
        return [_loaded(Image, self.out / scene["file"]) for scene in self.record["scenes"]]

    @property
    def grid(self):
        from PIL import Image

        return _loaded(Image, self.out / self.record["grid"])

    @property
    def scores(self) -> dict | None:
        return self.record.get("scores")

    def _repr_png_(self) -> bytes:
        return (self.out / self.record["grid"]).read_bytes()


def _loaded(image_module, path: Path):
    with image_module.open(path) as image:
        image.load()  # read now: the file handle closes here, the text chunks stay in .info
        return image


class Session:
    """A loaded model (LoRAs, sampler and prompt cache kept between calls). Make one with `load()`."""

    def __init__(self, generation_session, defaults: dict[str, Any]):
        self.pipeline = generation_session  # loraflow.generate.session.GenerationSession
        self.defaults = defaults  # options given to load(): used by every call unless overridden

    @property
    def family(self) -> str:
        return self.pipeline.family.name

    def _options(self, options: dict[str, Any], source: str, fields: dict) -> dict[str, Any]:
        """The session's defaults (those the command knows) overridden by this call's options."""
        model_keys = set(ModelOptions.model_fields) | set(ModelOptions.alias_map())
        fixed = sorted(k for k in options if k in model_keys)
        if fixed:
            raise ConfigError(f"{source}: key '{fixed[0]}' is chosen by loraflow.load(); load the model again to change it")
        if "loras" in options:
            options = {**options, "lora": lora_args(options.pop("loras"))}
        return {**{k: v for k, v in self.defaults.items() if k in fields}, **options}

    def generate(self, prompt: str, *, progress: bool | ProgressFn = True, **options: Any) -> Images:
        """Draw `prompt` (A1111 syntax: `(word:1.2)`, `<lora:name:0.8>`); options as `loraflow generate`
        (`negative_prompt`, `num_images`, `seed`, `num_inference_steps`/`steps`, `guidance_scale`,
        `height`, `width`, `scheduler`, `control`, `init_image`, `strength`, `mask`, `regions` as
        `[{"region": "left", "prompt": ...}]`, ...). PNGs are written only when `out=` is given;
        otherwise call `.save(folder)` on the result."""
        data = self._options(dict(options), "generate", GenerateConfig.model_fields)
        config = GenerateConfig.from_dict({**data, "prompt": prompt}, "generate").require_prompt()
        with progress_for(progress, "generate") as update:
            results = self.pipeline.generate(config, progress=update)
        images = Images(results)
        if "out" in {GenerateConfig.alias_map().get(k, k) for k in options}:  # `out` or any of its aliases
            images.save(config.out)
        return images

    def storyboard(self, story: str | Path | dict | Story, *, progress: bool | ProgressFn = True,
                   **options: Any) -> Storyboard:
        """Render a story (a .yaml/.json file, a dict in the story file's format, or a `Story`): one
        picture per scene, the grid and story.json in `out` (default outputs/story). Options as
        `loraflow storyboard` (`out`, `captions`, `score`, `best_of`, `seed`, `steps`, ...)."""
        data = self._options(dict(options), "storyboard", StoryboardConfig.model_fields)
        if isinstance(story, (str, Path)):
            cfg = StoryboardConfig.from_dict({**data, "story": str(story)}, "storyboard")
            story_obj = None
        else:
            cfg = StoryboardConfig.from_dict(data, "storyboard")
            story_obj = story if isinstance(story, Story) else Story.from_dict(story, "story")
        from loraflow.demo.identity import identity_for

        # a cast on the demo model is scored by the demo checker, as `loraflow storyboard` does
        identity = identity_for(cfg.identity, cfg.clip, self.pipeline.loaded.source == DEMO)
        with progress_for(progress, "storyboard") as update:
            record = run_storyboard(cfg, session=self.pipeline, progress=update, story=story_obj, identity=identity)
        return Storyboard(Path(cfg.out), record)


def load(model: str | Path | None = None, loras: LoraArg | Iterable[LoraArg] | dict | None = None,
         **options: Any) -> Session:
    """Load a model (a diffusers folder, a single .safetensors checkpoint, `tiny:sdxl`, ...; None: the
    bundled demo model) with optional LoRAs (`"file.safetensors:0.8"`, `("file", 0.8)` or
    `{"file": 0.8}`). Other options (`family`, `vae`, `device`, `dtype`, and any generate option
    such as `negative_prompt` or `steps`) become the session's defaults."""

    data = {**options, "model": str(model) if model is not None else None, "lora": lora_args(loras)}
    config = GenerateConfig.from_dict(data, "load")  # every option checked now, before the model loads
    session = GenerationSession.from_options(config)
    model_keys = set(ModelOptions.model_fields)
    defaults = {k: v for k, v in config.model_dump(exclude_unset=True).items() if k not in model_keys}
    return Session(session, defaults)


def storyboard(story: str | Path | dict | Story, model: str | Path | None = None,
               loras: LoraArg | Iterable[LoraArg] | dict | None = None, **options: Any) -> Storyboard:
    """Load the model (the story's `model` when none is given, else the demo model) and render the
    story; see `Session.storyboard`. To draw several stories, `load()` once and call `.storyboard`."""
    model_keys = set(ModelOptions.model_fields) | set(ModelOptions.alias_map())
    load_opts = {k: v for k, v in options.items() if k in model_keys}
    if model is None and isinstance(story, (str, Path, dict, Story)):
        model = _story_model(story)
    session = load(model, **load_opts)
    rest = {k: v for k, v in options.items() if k not in model_keys}
    if loras is not None:
        rest["loras"] = loras
    return session.storyboard(story, **rest)


def _story_model(story: str | Path | dict | Story) -> str | None:
    if isinstance(story, (str, Path)):
        return load_story(story).model
    return story.model if isinstance(story, Story) else (story or {}).get("model")


def plan(command: str = "train", config: str | Path | dict | None = None, *, gpu: str = "RTX 4090",
         vram: float | None = None, efficiency: float | None = None, **options: Any):
    """Full-size peak device memory (by category), FLOPs and step time of a run, planned on the meta
    device without a GPU or weights: `loraflow plan COMMAND`. `command` is "train", "generate" or
    "storyboard" (then `story=` names the story file); `config` a config file or dict of that
    command; `options` its options; `gpu` a card name or a size in GiB; `vram` picks the fastest
    low-VRAM modes that fit. Returns the `Plan` (`.peak_bytes`, `.by_category`, `.fits`, `.to_dict()`)."""
    from loraflow.plan.cli import (plan_generate_config, plan_storyboard_config, plan_train_config,
                                   with_gpu)
    from loraflow.plan.gpus import find_gpu

    find_gpu(gpu)  # an unknown name fails before the planning
    data = config if isinstance(config, dict) or config is None else None
    if command == "train":
        from loraflow.train.api import train_config

        result = plan_train_config(train_config(config, **({"vram": vram} if vram is not None else {}), **options))
    elif command == "generate":
        base = GenerateConfig.from_file(config) if data is None else GenerateConfig.from_dict(data or {}, "plan")
        result = plan_generate_config(base.merged(options, "plan") if options else base, vram)
    elif command == "storyboard":
        base = StoryboardConfig.from_file(config) if data is None else StoryboardConfig.from_dict(data or {}, "plan")
        result = plan_storyboard_config(base.merged(options, "plan") if options else base, vram)
    else:
        raise ConfigError(f"plan: command '{command}' is not one of: train, generate, storyboard")
    return with_gpu(result, gpu, efficiency)
