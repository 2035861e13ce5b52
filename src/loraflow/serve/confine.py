"""The path policy of the server, applied to every job payload before it is queued.

Every string field of a job body that names a file is listed here with its *kind*; the kind decides
the folder the value must resolve into (after symlinks are followed):

    model       models_dir  (built-in names, `demo` and the `tiny:` models, pass unchanged)
    lora        models_dir  (`name[:weight]`)
    controlnet  models_dir
    ipadapter   models_dir (a folder or file; its image encoder lies beside it)
    font        models_dir
    image       the uploads or the outputs folder (`@previous` = the story's previous panel)
    dataset     data_dir
    export      data_dir, and never one of the job's own inputs (`export_path` vs `dataset_path`)
    name        a bare file name (a train job's `name`: no folders, no `..`)
    server      decided by the server; the job ignores the value (refused earlier when set)

`tests/serve/test_security_paths.py` walks every string field of every job config and fails when a
field is in neither this table nor the list of free-text fields, so a new path field cannot slip by.
Values may be relative to the kind's folder or absolute; either way they end up absolute and inside.
"""
from __future__ import annotations

from typing import Any, Callable

from loraflow.atomic import same_file
from loraflow.config import split_weighted
from loraflow.data.recipe import output_paths
from loraflow.errors import ConfigError
from loraflow.serve.paths import ServerPaths, confine_path, safe_file_name
from loraflow.serve.validation import Invalid

PREVIOUS = "@previous"  # a storyboard scene's reference to the panel before it

_MODEL = {"model": "model", "vae": "model", "lora.*": "lora", "lora_dir.*": "server", "out": "server"}
_REFERENCES = {"controlnet.*": "controlnet", "control.*.image": "image", "control.*.model": "controlnet",
               "annotator_dir": "server", "init_image": "image", "mask": "image",
               "ip_adapter": "ipadapter", "reference.*.image": "image", "reference.*.mask": "image"}

PATH_FIELDS: dict[str, dict[str, str]] = {
    "generate": {**_MODEL, **_REFERENCES},
    "storyboard": {
        **{f"config.{k}": v for k, v in _MODEL.items()},
        "config.story": "server", "config.clip": "model", "config.aesthetic": "model",
        "story.model": "model", "story.loras.*": "lora", "story.controlnets.*": "controlnet",
        "story.grid.font": "font", "story.scenes.*.init_image": "image",
        "story.scenes.*.control.*.image": "image", "story.scenes.*.control.*.model": "controlnet",
        "story.characters.*.lora": "lora", "story.characters.*.references.*": "image",
        "config.ip_adapter": "ipadapter", "story.ip_adapter": "ipadapter",
    },
    "train": {"model": "model", "vae": "model", "dataset": "dataset", "output": "server", "cache_dir": "server",
              "name": "name", "resume": "server", "validation_clip": "model", "validation_aesthetic": "model",
              "reg_dataset": "dataset", "eval_dataset": "dataset"},
    "data-filter": {"recipe.dataset_path": "dataset", "recipe.export_path": "export",
                    # model-backed ops (model_filters.py) name local model folders
                    "recipe.process.*.*.hf_scorer_model": "model", "recipe.process.*.*.clip_model": "model",
                    "recipe.process.*.*.hf_clip": "model", "recipe.process.*.*.hf_img2seq": "model",
                    "recipe.process.*.*.tagger_model": "model"},
}


def confine_payload(kind: str, payload: dict, paths: ServerPaths) -> dict:
    """`payload` with every path field of `kind` resolved inside its folder; `PathRefused` (403) naming
    the field otherwise. The same message whatever lies outside, so nothing outside is revealed."""
    resolvers: dict[str, Callable[[str, str], str]] = {
        "model": lambda v, f: v if paths.is_builtin_model(v) else str(confine_path(v, paths.roots("model"), f)),
        "lora": lambda v, f: _lora(v, f, paths),
        "controlnet": lambda v, f: str(confine_path(v, paths.roots("model"), f)),
        "ipadapter": lambda v, f: str(confine_path(v, paths.roots("model"), f)),
        "font": lambda v, f: str(confine_path(v, paths.roots("model"), f)),
        "image": lambda v, f: v if v == PREVIOUS else str(confine_path(v, paths.roots("image"), f)),
        "dataset": lambda v, f: str(confine_path(v, paths.roots("dataset"), f)),
        "export": lambda v, f: str(confine_path(v, paths.roots("dataset"), f)),
        "name": lambda v, f: safe_file_name(v, f),
        "server": lambda v, f: v,
    }
    for pattern, what in PATH_FIELDS.get(kind, {}).items():
        resolve = resolvers[what]  # an empty value means "not given", except for a name, which must be one
        payload = _apply(payload, pattern.split("."), "", lambda v, f, r=resolve, w=what: r(v, f) if v or w == "name" else v)
    if kind == "data-filter":
        check_outputs_apart(payload["recipe"]["dataset_path"], payload["recipe"]["export_path"], "recipe.export_path")
    return payload


def _lora(spec: str, field: str, paths: ServerPaths) -> str:
    name, weight = lora_weight(spec, field)
    path = confine_path(name, paths.roots("lora"), field)
    return str(path) if weight is None else f"{path}:{weight}"


def lora_weight(spec: str, field: str) -> tuple[str, float | None]:
    """`name[:weight]` of a request -> (name, weight or None); a weight that is no number is a 422
    naming `field`."""
    try:
        return split_weighted(spec, None)
    except ConfigError as e:
        raise Invalid(f"key '{field}': {e}", field) from None


def _apply(data: Any, parts: list[str], loc: str, fn: Callable[[str, str], Any]) -> Any:
    """Apply `fn(value, location)` to the string(s) at dotted `parts` (`*`: every item / value)."""
    if not parts:
        return fn(data, loc) if isinstance(data, str) else data
    head, rest = parts[0], parts[1:]
    join = (lambda k: f"{loc}.{k}" if loc else str(k))
    if head == "*":
        if isinstance(data, list):
            return [_apply(v, rest, join(i), fn) for i, v in enumerate(data)]
        if isinstance(data, dict):
            return {k: _apply(v, rest, join(k), fn) for k, v in data.items()}
        return data
    if isinstance(data, dict) and data.get(head) is not None:
        return {**data, head: _apply(data[head], rest, join(head), fn)}
    return data


def check_outputs_apart(dataset_path: str, export_path: str, field: str) -> None:
    """A data filter writes `export_path` and its `_rejected` / `_errored` / `_stats` siblings; none of
    them may be the input manifest (a filter would otherwise replace its own source)."""
    for out in output_paths(export_path):
        if same_file(out, dataset_path):
            raise Invalid(f"key '{field}': the filter would write {out.name} over its input "
                          "'dataset_path'; choose another export_path", field)
