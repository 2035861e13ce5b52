"""Job kinds: each is `validate(body, paths) -> payload` (at the HTTP boundary: typed config, every
file name resolved inside the server's folders, stored as JSON with the job), `parse(payload)` -> the
typed job, and `run(ctx, job) -> result` (in the worker thread).

The bodies are the CLI's own configs: `GenerateConfig`, `StoryboardConfig` + a story,
`TrainConfig`, a data-juicer recipe. What only the server may decide (output folders, pickle,
extra search folders) is refused when a client sets it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, TypeVar

from loraflow.data.filter_run import filter_dataset
from loraflow.data.recipe import Recipe, build_ops
from loraflow.errors import ConfigError
from loraflow.generate.cast import cast_problem
from loraflow.generate.options import GenerateConfig
from loraflow.generate.regions import AREAS
from loraflow.generate.session import save_results
from loraflow.generate.story import Story, StoryboardConfig
from loraflow.generate.storyboard import run_storyboard as render_storyboard
from loraflow.models.loading import BUILTIN_MODELS, DEMO
from loraflow.models.prompt_syntax import extract_lora_tags
from loraflow.serve.cancel import cancel_points
from loraflow.serve.comfy.executor import run_prompt
from loraflow.serve.comfy.values import WorkflowJob
from loraflow.serve.confine import lora_weight
from loraflow.serve.context import JobContext
from loraflow.serve.paths import NotFound, ServerPaths, safe_join
from loraflow.serve.preview import image_to_jpeg, unet_previews
from loraflow.serve.validation import Invalid, parse_options
from loraflow.train.checkpoint import list_checkpoints
from loraflow.train.config import TrainConfig
from loraflow.train.trainer import train

Job = TypeVar("Job")


@dataclass(frozen=True)
class JobKind(Generic[Job]):
    name: str
    validate: Callable[[Any, ServerPaths], dict]  # HTTP body -> the JSON payload stored with the job
    parse: Callable[[dict], Job]  # stored payload -> the typed job the worker runs
    run: Callable[[JobContext, Job], dict]  # -> the result, stored as JSON
    help: str
    # checks that may only see the payload after the path policy (`confine_payload`) resolved it
    check_confined: Callable[[dict], None] | None = None


@dataclass(frozen=True)
class StoryboardJob:
    config: StoryboardConfig  # `story` and `out` are set by the worker
    story: dict  # the checked story document, written next to the outputs for the renderer

    @classmethod
    def from_payload(cls, payload: dict) -> "StoryboardJob":
        return cls(StoryboardConfig(**payload["config"]), payload["story"])


@dataclass(frozen=True)
class DataFilterJob:
    recipe: dict  # a data-juicer recipe with paths resolved in the data folder
    np: int  # worker processes

    @classmethod
    def from_payload(cls, payload: dict) -> "DataFilterJob":
        return cls(payload["recipe"], int(payload["np"]))


# ---- shared checks --------------------------------------------------------------------------------
def _server_only(cfg, fields: tuple[str, ...], source: str) -> None:
    """Keys only the server decides: refused when the body names them at all (`model_fields_set`),
    whatever the value, so a changed default can never open them up."""
    for name in fields:
        if name in cfg.model_fields_set:
            raise Invalid(f"{source}: key '{name}' is decided by the server and cannot be set over HTTP", name)


def _resolve_model(name: str | None, paths: ServerPaths, field: str = "model") -> str:
    """A model name from a request -> what load_pipeline takes; none given: the built-in demo model."""
    if not name:
        return DEMO
    if name.startswith("tiny:") and name not in BUILTIN_MODELS:
        tiny = ", ".join(m for m in BUILTIN_MODELS if m.startswith("tiny:"))
        raise Invalid(f"key '{field}' = {name!r}: unknown tiny model; use one of: {tiny}", field)
    return name if name in BUILTIN_MODELS else paths.model(name)


def _resolve_loras(specs: list[str], paths: ServerPaths, field: str) -> list[str]:
    """`name[:weight]` -> `/abs/name.safetensors:weight`, each inside models_dir."""
    out = []
    for i, spec in enumerate(specs):
        name, weight = lora_weight(spec, f"{field}.{i}")
        out.append(f"{paths.lora(name)}:{1.0 if weight is None else weight}")
    return out


def _prompt_loras(prompt: str, paths: ServerPaths) -> tuple[str, list[str]]:
    """A1111 `<lora:name:w>` tags -> resolved LoRA specs (the session would otherwise look names up
    relative to the server's working directory)."""
    stripped, tags = extract_lora_tags(prompt)
    return (stripped if tags else prompt), [f"{paths.lora(name)}:{w}" for name, w in tags]


def _check_sampling(cfg, paths: ServerPaths, source: str) -> dict:
    """Model, VAE, LoRAs and reference images of a GenerateConfig/StoryboardConfig, resolved;
    pickle, lora_dir and annotator_dir refused."""
    _server_only(cfg, ("allow_pickle", "lora_dir", "annotator_dir"), source)
    update: dict[str, Any] = {"lora": _resolve_loras(cfg.lora, paths, "lora")}
    if cfg.model:
        update["model"] = _resolve_model(cfg.model, paths)
    if cfg.vae:
        update["vae"] = paths.model(cfg.vae)
    update.update(_check_references(cfg, paths, source))
    return update


def _check_references(cfg, paths: ServerPaths, source: str) -> dict:
    """ControlNet units, init image and mask (when the config has them): images are uploads
    (POST /upload/image) or earlier outputs, ControlNets come from models_dir/controlnet."""
    update: dict[str, Any] = {}
    for key in ("init_image", "mask"):
        if getattr(cfg, key, None):
            update[key] = str(_reference_image(cfg, key, getattr(cfg, key), paths))
    if getattr(cfg, "control", None):
        units = []
        for i, unit in enumerate(cfg.control):
            changes = {"image": str(_reference_image(cfg, f"control.{i}.image", unit.image, paths))}
            if unit.model:
                changes["model"] = str(paths.controlnet(unit.model))
            units.append(unit.model_copy(update=changes))
        update["control"] = units
        update["controlnet"] = [str(paths.controlnet(c)) for c in cfg.controlnet]
    if getattr(cfg, "ip_adapter", None):
        update["ip_adapter"] = str(paths.ip_adapter(cfg.ip_adapter))
    if getattr(cfg, "reference", None):
        update["reference"] = [r.model_copy(update={
            "image": str(_reference_image(cfg, f"reference.{i}.image", r.image, paths)),
            "mask": r.mask if not r.mask or r.mask in AREAS else str(_reference_image(cfg, f"reference.{i}.mask",
                                                                                      r.mask, paths))})
            for i, r in enumerate(cfg.reference)]
    if getattr(cfg, "regions", None):  # a region is an area name or a mask image
        update["regions"] = [r if r.region in AREAS else r.model_copy(update={
            "region": str(_reference_image(cfg, f"regions.{i}.region", r.region, paths))})
            for i, r in enumerate(cfg.regions)]
    return update


def _reference_image(cfg, field: str, name: str, paths: ServerPaths) -> Path:
    for kind in ("input", "output"):
        try:
            return paths.output_file(name, kind=kind)
        except NotFound:
            continue
    raise Invalid(f"key '{field}' = {name!r}: no such image in the uploads (POST /upload/image) or outputs", field)


# ---- generate -------------------------------------------------------------------------------------
def validate_generate(body: Any, paths: ServerPaths) -> dict:
    cfg = parse_options(GenerateConfig, body, "generate")
    _server_only(cfg, ("out",), "generate")
    if not cfg.prompt.strip():
        raise Invalid("generate: key 'prompt' is empty: write what to draw", "prompt")
    update = _check_sampling(cfg, paths, "generate")
    update.setdefault("model", _resolve_model(None, paths))
    prompt, tag_loras = _prompt_loras(cfg.prompt, paths)
    update["prompt"], update["lora"] = prompt, update["lora"] + tag_loras
    if cfg.regions:  # a region prompt's tags act on the whole picture (the session's rule): resolved alike
        regions = []
        for region in update["regions"]:
            text, region_loras = _prompt_loras(region.prompt, paths)
            update["lora"] += [spec for spec in region_loras if spec not in update["lora"]]
            regions.append(region.model_copy(update={"prompt": text}))
        update["regions"] = regions
    return json.loads(cfg.model_copy(update=update).model_dump_json())


def run_generate(ctx: JobContext, cfg: GenerateConfig) -> dict:
    session = ctx.models.session(cfg.model, vae=cfg.vae, dtype=cfg.dtype, device=cfg.device, family=cfg.family)
    ctx.check_cancel()
    with unet_previews(session.pipe, session.family.name, ctx.preview), cancel_points(session.pipe, ctx.check_cancel):
        results = session.generate(cfg, progress=ctx.progress)
    if results:  # the last preview is the finished picture, not the last noisy latent
        ctx.preview(image_to_jpeg(results[0].image))
    save_results(results, ctx.out_dir)
    return {"images": [_image_entry(ctx, r.path, seed=r.seed, infotext=r.infotext, params=_jsonable(r.params))
                       for r in results]}


def _image_entry(ctx, path: Path, **extra) -> dict:
    return {"filename": path.name, "subfolder": ctx.subfolder, "type": "output",
            "url": f"/view?filename={path.name}&subfolder={ctx.subfolder}&type=output", **extra}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


# ---- storyboard -----------------------------------------------------------------------------------
def yaml_or_object(value: Any, where: str, key: str) -> Any:
    """A body value sent as YAML text or as a JSON object; bad YAML is a 422 naming the key."""
    import yaml

    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise Invalid(f"{where}: key '{key}' is not valid YAML: {str(e).splitlines()[0]}", key) from None


def validate_storyboard(body: Any, paths: ServerPaths) -> dict:
    """`{"story": YAML text or mapping, ...StoryboardConfig options}`."""
    if not isinstance(body, dict) or "story" not in body:
        raise Invalid("storyboard: key 'story' is required (the story as YAML text or a JSON object)", "story")
    body = dict(body)
    story = parse_options(Story, yaml_or_object(body.pop("story"), "storyboard", "story"), "story", prefix="story.")
    cfg = parse_options(StoryboardConfig, body, "storyboard")
    _server_only(cfg, ("out", "story"), "storyboard")
    update = _check_sampling(cfg, paths, "storyboard")
    for key in ("clip", "aesthetic"):  # scorer weights are named inside models_dir, like every model
        name = getattr(cfg, key)
        if name:
            path = safe_join(paths.models, name, key)
            if not path.exists():
                raise Invalid(f"storyboard: key '{key}' = {name!r}: not found in the server's models folder", key)
            update[key] = str(path)
    story_update: dict[str, Any] = {"loras": _resolve_loras(story.loras, paths, "story.loras")}
    if story.model:
        story_update["model"] = _resolve_model(story.model, paths, "story.model")
    if not cfg.model and not story.model:
        update["model"] = _resolve_model(None, paths)
    if story.grid.font:
        story_update["grid"] = story.grid.model_copy(update={"font": str(safe_join(paths.models, story.grid.font, "font"))})
    if story.ip_adapter:
        story_update["ip_adapter"] = str(paths.ip_adapter(story.ip_adapter))
    if story.characters:
        story_update["characters"] = [_serve_character(c, i, paths) for i, c in enumerate(story.characters)]
    problem = cast_problem(story.characters, story.scenes)
    if problem:
        raise Invalid(f"story.{problem}", "story." + problem.split(":")[0])
    for i, scene in enumerate(story.scenes):
        prompt, tags = _prompt_loras(scene.prompt, paths)
        if tags:
            raise Invalid(f"story.scenes.{i}.prompt: put LoRAs in the story's `loras` list, not in a scene prompt",
                          f"story.scenes.{i}.prompt")
    _refuse_lora_tags(story)
    return {"config": json.loads(cfg.model_copy(update=update).model_dump_json()),
            "story": json.loads(story.model_copy(update=story_update).model_dump_json())}


def _refuse_lora_tags(story: Story) -> None:
    """The story's style and its characters' words become part of panel prompts, whose `<lora:>` tags
    the session loads by path: a 422 for any tag there, which would name a file past the path policy."""
    texts = {"story.style": story.style}
    for i, c in enumerate(story.characters):
        texts[f"story.characters.{i}.trigger"] = c.trigger
        d = c.description
        texts.update({f"story.characters.{i}.description": d} if isinstance(d, str) else
                     {f"story.characters.{i}.description.{lang}": text for lang, text in d.items()})
    for key, text in texts.items():
        if extract_lora_tags(text)[1]:
            raise Invalid(f"{key}: put LoRAs in the story's `loras` list or a character's `lora`, not in its words",
                          key)


def _serve_character(character, i: int, paths: ServerPaths):
    """A character's LoRA from models_dir/loras and its references from the uploads or outputs, like
    every other file a request names."""
    changes: dict[str, Any] = {"references": [
        str(_reference_image(None, f"story.characters.{i}.references.{j}", ref, paths))
        for j, ref in enumerate(character.references)]}
    if character.lora:
        changes["lora"] = str(paths.lora(character.lora))
    return character.model_copy(update=changes)


def run_storyboard(ctx: JobContext, job: StoryboardJob) -> dict:
    import yaml

    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    story_path = out / "story.yaml"
    story_path.write_text(yaml.safe_dump(job.story, allow_unicode=True, sort_keys=False), encoding="utf-8")
    cfg = job.config.model_copy(update={"story": str(story_path), "out": str(out)})
    model = cfg.model or job.story.get("model")
    session = ctx.models.session(model, vae=cfg.vae, dtype=cfg.dtype, device=cfg.device, family=cfg.family)
    with unet_previews(session.pipe, session.family.name, ctx.preview), cancel_points(session.pipe, ctx.check_cancel):
        index = render_storyboard(cfg, session=session, progress=ctx.progress)
    scenes = [_image_entry(ctx, out / s["file"], seed=s["seed"], infotext=s["infotext"], title=s["title"])
              for s in index["scenes"]]
    return {"images": scenes, "grid": _image_entry(ctx, out / index["grid"]), "story": index}


# ---- train ----------------------------------------------------------------------------------------
def validate_train(body: Any, paths: ServerPaths) -> dict:
    """A TrainConfig as a JSON object, or as YAML text in a JSON string (the web UI's pasted config)."""
    cfg = parse_options(TrainConfig, yaml_or_object(body, "train", "config"), "train")
    _server_only(cfg, ("output", "cache_dir"), "train")
    if cfg.resume not in (None, "latest"):
        raise Invalid("train: key 'resume' may only be 'latest' over HTTP (checkpoints of this job)", "resume")
    if not cfg.dataset:
        raise Invalid("train: key 'dataset' is required (a dataset folder or file under the server's data folder)", "dataset")
    dataset = paths.data_file(cfg.dataset)
    if not dataset.exists():
        raise Invalid(f"train: key 'dataset' = {cfg.dataset!r}: not found in the server's data folder", "dataset")
    update: dict[str, Any] = {"dataset": str(dataset), "model": _resolve_model(cfg.model, paths)}
    if cfg.vae:
        update["vae"] = paths.model(cfg.vae)
    return json.loads(cfg.model_copy(update=update).model_dump_json())


def run_train(ctx: JobContext, cfg: TrainConfig) -> dict:
    update = {"output": str(ctx.out_dir), "cache_dir": str(ctx.paths.outputs / ".cache" / "train")}
    if cfg.resume is None and list_checkpoints(ctx.out_dir):
        update["resume"] = "latest"  # a re-queued (cancelled / interrupted) run continues where it stopped
    cfg = cfg.model_copy(update=update)
    ctx.check_cancel()

    def on_step(step: int, loss: float, lr: float) -> None:
        ctx.emit("loss", step=step, loss=float(loss), lr=float(lr))

    # progress raises JobCancelled when the job is cancelled
    result = train(cfg, progress=ctx.progress, on_step=on_step)
    files = {name: str(Path(p).relative_to(ctx.paths.outputs)) for name, p in
             (("lora", result.lora_path), ("diffusers", result.diffusers_path), ("loss_curve", result.loss_curve)) if p}
    return {"steps": result.steps, "files": files, "final_loss": result.losses[-1][1] if result.losses else None}


# ---- data filter ----------------------------------------------------------------------------------
def validate_data_filter(body: Any, paths: ServerPaths) -> dict:
    """`{"recipe": YAML text or mapping}`: dataset_path / export_path are names in the data folder."""
    if not isinstance(body, dict) or set(body) - {"recipe", "np"} or "recipe" not in body:
        raise Invalid("data-filter: expected {\"recipe\": YAML text or object, \"np\": optional int}", "recipe")
    recipe = parse_options(Recipe, yaml_or_object(body["recipe"], "data-filter", "recipe"), "recipe", prefix="recipe.")
    update = {}
    for key in ("dataset_path", "export_path"):
        value = getattr(recipe, key)
        if not value:
            raise Invalid(f"recipe: key '{key}' is required (a path in the server's data folder)", f"recipe.{key}")
        update[key] = str(paths.data_file(value))
    if not Path(update["dataset_path"]).is_file():
        raise Invalid(f"recipe: key 'dataset_path' = {recipe.dataset_path!r}: not found in the data folder", "recipe.dataset_path")
    np = body.get("np", 1)
    if not isinstance(np, int) or isinstance(np, bool) or np < 1:
        raise Invalid("data-filter: key 'np' must be a positive integer", "np")
    return {"recipe": json.loads(recipe.model_copy(update=update).model_dump_json()), "np": np}


def check_data_filter_ops(payload: dict) -> None:
    """Build the ops now, so a bad op name is a 422, not a failed job; after the path policy, so an
    op that checks its model folder exists is never shown one outside (its answer would tell what is there)."""
    try:
        build_ops(Recipe(**payload["recipe"]), "recipe")
    except ConfigError as e:
        raise Invalid(str(e), "recipe.process") from None


def run_data_filter(ctx: JobContext, job: DataFilterJob) -> dict:
    import yaml

    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = ctx.out_dir / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(job.recipe, allow_unicode=True), encoding="utf-8")
    result = filter_dataset(recipe_path, backend="local", np=job.np, progress=False)
    return {"kept": len(result.kept), "rejected": len(result.rejected), "errored": len(result.errored),
            "rejected_by": result.rejected_by, "summary": result.summary(),
            "outputs": {k: str(Path(v).relative_to(ctx.paths.data.resolve())) for k, v in result.outputs.items()}}


# ---- ComfyUI workflow -----------------------------------------------------------------------------
def validate_workflow(body: Any, paths: ServerPaths) -> dict:
    raise Invalid("submit ComfyUI workflows to POST /prompt", "kind")


JOB_KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("generate", validate_generate, GenerateConfig.model_validate, run_generate,
            "text-to-image (GenerateConfig)"),
    JobKind("storyboard", validate_storyboard, StoryboardJob.from_payload, run_storyboard,
            "a story -> one image per scene + grid"),
    JobKind("train", validate_train, TrainConfig.model_validate, run_train, "train a LoRA (TrainConfig)"),
    JobKind("data-filter", validate_data_filter, DataFilterJob.from_payload, run_data_filter,
            "run a data-juicer recipe", check_confined=check_data_filter_ops),
    JobKind("workflow", validate_workflow, WorkflowJob.from_payload, run_prompt,
            "a ComfyUI API-format prompt (POST /prompt)"),
)}
