"""The server's path policy (serve/confine.py) tried as an attacker would: every path-taking field of
every job kind, with `../`, an absolute path and a symlink inside the served folder that leads out.
Each is refused with 403 naming the field, in words that do not depend on what lies outside."""
from __future__ import annotations

import io
import json
import types
import typing
from typing import get_args, get_origin

import httpx
import pytest
from PIL import Image
from pydantic import BaseModel

from loraflow.serve.confine import PATH_FIELDS

# Free text and choices: every other string field of a job body must be in PATH_FIELDS.
NOT_PATHS = {
    "generate": {"prompt", "negative_prompt", "scheduler", "device", "regions.*.prompt"},
    "storyboard": {"config.negative_prompt", "config.scheduler", "config.device", "story.title", "story.style",
                   "story.negative_prompt", "story.defaults.scheduler", "story.scenes.*.title",
                   "story.scenes.*.description", "story.scenes.*.prompt", "story.scenes.*.negative_prompt",
                   "story.language", "story.scenes.*.cast.*", "story.characters.*.name", "story.characters.*.trigger",
                   "story.characters.*.description", "story.characters.*.description.*",
                   # words of a character sheet's portraits (the server renders no sheets)
                   "story.sheet.framing", "story.sheet.framing.*"},
    "train": {"caption_prefix", "device", "mixed_precision", "validation_prompt.*", "caption_separator", "mask_column"},
    "data-filter": {"recipe.project_name", "recipe.text_keys", "recipe.text_keys.*", "recipe.image_key",
                    "recipe.image_special_token", "recipe.eoc_special_token", "recipe.process.*.*.text_key",
                    "recipe.process.*.*.image_key", "recipe.process.*.*.min_size", "recipe.process.*.*.max_size",
                    "recipe.process.*.*.hash_method", "recipe.process.*.*.lang", "recipe.process.*.*.tokenization",
                    "recipe.process.*.*.any_or_all", "recipe.process.*.*.device", "recipe.process.*.*.prompt",
                    "recipe.process.*.*.prompt_key", "recipe.process.*.*.original_text_key",
                    "recipe.process.*.*.tag_field_name"},
}


def _string_fields(annotation, loc: str):
    """Dotted locations of every `str` inside a pydantic annotation (`*`: each list item / dict value)."""
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(annotation):
            yield from _string_fields(arg, loc)
    elif annotation is str:
        yield loc
    elif origin in (list, tuple) and get_args(annotation):
        yield from _string_fields(get_args(annotation)[0], loc + ".*")
    elif origin is dict:
        yield from _string_fields(get_args(annotation)[1], loc + ".*")
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _string_fields(field.annotation, f"{loc}.{name}" if loc else name)


def _job_string_fields() -> dict[str, set[str]]:
    from loraflow.data.ops.registry import OPS
    from loraflow.data.recipe import Recipe
    from loraflow.generate.options import GenerateConfig
    from loraflow.generate.storyboard import Story, StoryboardConfig
    from loraflow.train.config import TrainConfig

    ops = {loc for op in OPS.values() for loc in _string_fields(op.Params, "recipe.process.*.*")}
    return {"generate": set(_string_fields(GenerateConfig, "")),
            "storyboard": set(_string_fields(StoryboardConfig, "config")) | set(_string_fields(Story, "story")),
            "train": set(_string_fields(TrainConfig, "")),
            "data-filter": set(_string_fields(Recipe, "recipe")) | ops}


def test_every_string_field_of_every_job_is_a_known_path_or_free_text():
    for kind, found in _job_string_fields().items():
        unclassified = found - set(PATH_FIELDS[kind]) - NOT_PATHS[kind]
        assert not unclassified, f"{kind}: classify {sorted(unclassified)} in serve/confine.py PATH_FIELDS"
        stale = set(PATH_FIELDS[kind]) - found
        assert not stale, f"{kind}: PATH_FIELDS names fields that no longer exist: {sorted(stale)}"


# One body per (kind, field); `{v}` is where the attacker's value goes.
STORY = {"scenes": [{"prompt": "a"}]}
CASES = [
    ("generate", "model", {"prompt": "a", "model": "{v}"}),
    ("generate", "vae", {"prompt": "a", "vae": "{v}"}),
    ("generate", "lora", {"prompt": "a", "lora": ["{v}:0.5"]}),
    ("generate", "lora", {"prompt": "a <lora:{v}:0.5>"}),
    ("generate", "lora", {"prompt": "a", "regions": [{"region": "left", "prompt": "b <lora:{v}:0.5>"}]}),
    ("generate", "controlnet", {"prompt": "a", "control": [{"type": "canny", "image": "in.png"}], "controlnet": ["{v}"]}),
    ("generate", "control.0.image", {"prompt": "a", "control": [{"type": "canny", "image": "{v}"}]}),
    ("generate", "regions.0.region", {"prompt": "a", "regions": [{"region": "{v}", "prompt": "b"}]}),
    ("generate", "control.0.model", {"prompt": "a", "control": [{"type": "canny", "image": "in.png", "model": "{v}"}]}),
    ("generate", "init_image", {"prompt": "a", "init_image": "{v}"}),
    ("generate", "mask", {"prompt": "a", "init_image": "in.png", "mask": "{v}"}),
    ("generate", "ip_adapter", {"prompt": "a", "ip_adapter": "{v}", "reference": ["in.png"]}),
    ("generate", "reference.0.image", {"prompt": "a", "reference": ["{v}:0.5"]}),
    ("generate", "reference.0.mask", {"prompt": "a", "reference": [{"image": "in.png", "mask": "{v}"}]}),
    ("storyboard", "model", {"model": "{v}", "story": STORY}),
    ("storyboard", "clip", {"story": STORY, "clip": "{v}"}),
    ("storyboard", "aesthetic", {"story": STORY, "aesthetic": "{v}"}),
    ("storyboard", "story.model", {"story": {**STORY, "model": "{v}"}}),
    ("storyboard", "story.loras", {"story": {**STORY, "loras": ["{v}"]}}),
    ("storyboard", "story.controlnets", {"story": {**STORY, "controlnets": {"canny": "{v}"}}}),
    ("storyboard", "story.grid.font", {"story": {**STORY, "grid": {"font": "{v}", "captions": True}}}),
    ("storyboard", "story.scenes.0.init_image", {"story": {"scenes": [{"prompt": "a", "init_image": "{v}"}]}}),
    ("storyboard", "story.scenes.0.control.0.image",
     {"story": {"scenes": [{"prompt": "a", "control": [{"type": "canny", "image": "{v}"}]}]}}),
    ("storyboard", "story.scenes.0.control.0.model",
     {"story": {"scenes": [{"prompt": "a", "control": [{"type": "canny", "image": "in.png", "model": "{v}"}]}]}}),
    ("storyboard", "story.scenes.0.regions.k", {"story": {
        "characters": [{"name": "k", "description": "a cat"}],
        "scenes": [{"prompt": "a", "regions": {"k": "{v}"}}]}}),
    ("storyboard", "story.characters.0.lora", {"story": {**STORY, "characters": [{"name": "k", "description": "a cat", "lora": "{v}"}]}}),
    ("storyboard", "story.characters.0.references",
     {"story": {**STORY, "characters": [{"name": "k", "description": "a cat", "references": ["{v}"]}]}}),
    ("storyboard", "ip_adapter", {"story": STORY, "ip_adapter": "{v}"}),
    ("storyboard", "story.ip_adapter", {"story": {**STORY, "ip_adapter": "{v}"}}),
    ("train", "model", {"dataset": "shapes", "model": "{v}"}),
    ("train", "vae", {"dataset": "shapes", "vae": "{v}"}),
    ("train", "dataset", {"dataset": "{v}"}),
    ("train", "validation_clip", {"dataset": "shapes", "validation_clip": "{v}"}),
    ("train", "reg_dataset", {"dataset": "shapes", "reg_dataset": "{v}"}),
    ("train", "eval_dataset", {"dataset": "shapes", "eval_dataset": "{v}"}),
    ("train", "validation_aesthetic", {"dataset": "shapes", "validation_aesthetic": "{v}"}),
    ("data-filter", "recipe.dataset_path", {"recipe": {"dataset_path": "{v}", "export_path": "out.jsonl"}}),
    ("data-filter", "recipe.export_path", {"recipe": {"dataset_path": "input.jsonl", "export_path": "{v}"}}),
    ("data-filter", "recipe.process.0.image_aesthetics_filter.hf_scorer_model",
     {"recipe": {"dataset_path": "input.jsonl", "export_path": "out.jsonl",
                 "process": [{"image_aesthetics_filter": {"hf_scorer_model": "{v}"}}]}}),
    ("data-filter", "recipe.process.0.image_captioning_mapper.hf_img2seq",
     {"recipe": {"dataset_path": "input.jsonl", "export_path": "out.jsonl",
                 "process": [{"image_captioning_mapper": {"hf_img2seq": "{v}"}}]}}),
    ("data-filter", "recipe.process.0.image_text_similarity_filter.hf_clip",
     {"recipe": {"dataset_path": "input.jsonl", "export_path": "out.jsonl",
                 "process": [{"image_text_similarity_filter": {"hf_clip": "{v}"}}]}}),
]


def _fill(body, value: str):
    return json.loads(json.dumps(body).replace("{v}", value.replace("\\", "\\\\").replace('"', '\\"')))


@pytest.fixture
def attack(start_server, tmp_path):
    """A server whose every folder holds a symlink `link` to a folder outside, which holds `secret.png`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (64, 64), "red").save(outside / "secret.png")
    (outside / "secret.jsonl").write_text('{"text": "x", "images": []}\n')
    data = tmp_path / "data"
    (data / "shapes").mkdir(parents=True)
    (data / "input.jsonl").write_text('{"text": "a", "images": []}\n')
    url, thread = start_server(data_dir=str(data))
    paths = thread.state.paths
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(buf, format="PNG")
    with httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/upload/image", files={"image": ("in.png", buf.getvalue())}).status_code == 200
        links = []
        for folder in (paths.models, paths.loras, paths.outputs, paths.inputs, paths.data):
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "link").symlink_to(outside, target_is_directory=True)
            links.append(folder / "link")
        client.outside = outside
        yield client
        for link in links:
            link.unlink()


@pytest.mark.parametrize("kind,field,body", CASES, ids=[f"{k}:{f}:{i}" for i, (k, f, _) in enumerate(CASES)])
def test_each_path_field_refuses_traversal_absolute_and_symlink_out(attack, kind, field, body):
    outside = attack.outside
    answers = {}
    for how, value in {"dotdot": "../../../outside/secret.png", "absolute": str(outside / "secret.png"),
                       "absolute-missing": str(outside / "missing.png"), "symlink": "link/secret.png",
                       "symlink-missing": "link/missing.png"}.items():
        r = attack.post(f"/api/jobs/{kind}", json=_fill(body, value))
        assert r.status_code == 403, (how, r.status_code, r.text)
        text = r.json()["error"]
        assert "secret" not in text.replace(value, "") and str(outside) not in text.replace(value, "")
        answers[how] = text.replace(value, "VALUE")
    # the answer is the same whether the file outside exists or not: nothing is learnt about it
    assert answers["absolute"] == answers["absolute-missing"]
    assert answers["symlink"] == answers["symlink-missing"]
    assert not (outside / "out.jsonl").exists()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", ".hidden", "x\\y", "/abs", "a\x00b", ""])
def test_train_name_is_a_plain_file_name(attack, name):
    r = attack.post("/api/jobs/train", json={"dataset": "shapes", "name": name, "max_steps": 1})
    assert r.status_code in (403, 422) and "name" in r.text, r.text


def test_train_name_in_any_script_is_accepted_at_submission(attack):
    r = attack.post("/api/jobs/train", json={"dataset": "shapes", "name": "猫 style-v1.2", "max_steps": 1})
    assert r.status_code == 202, r.text
    attack.post(f"/api/jobs/{r.json()['id']}/cancel")


@pytest.mark.parametrize("dataset,export", [("input.jsonl", "input.jsonl"), ("input.jsonl", "./input.jsonl"),
                                            ("input.jsonl", "alias.jsonl"),  # a symlink to the input
                                            ("result_rejected.jsonl", "result.jsonl")])  # a sibling it writes
def test_data_filter_never_writes_over_its_input(attack, dataset, export):
    data = attack.outside.parent / "data"
    (data / "alias.jsonl").symlink_to(data / "input.jsonl")
    (data / "result_rejected.jsonl").write_text('{"text": "b", "images": []}\n')
    before = (data / dataset).read_bytes()
    r = attack.post("/api/jobs/data-filter", json={"recipe": {"dataset_path": dataset, "export_path": export}})
    assert r.status_code == 422 and r.json()["field"] == "recipe.export_path", r.text
    assert (data / dataset).read_bytes() == before


@pytest.mark.parametrize("route", ["/view?filename=secret.png&subfolder=link&type=output",
                                   "/view?filename=link/secret.png&type=input",
                                   "/view?filename=secret.png&subfolder=link&type=input",
                                   "/api/view?filename=secret.png&subfolder=link"])
def test_symlink_out_of_a_served_folder_is_refused_on_file_routes(attack, route):
    r = attack.get(route)
    assert r.status_code in (403, 404) and r.headers["content-type"].startswith("application/json"), r.status_code


def test_symlinks_out_are_not_listed(attack):
    listed = json.dumps([attack.get("/models/loras").json(), attack.get("/models/checkpoints").json(),
                         attack.get("/object_info/LoadImage").json(), attack.get("/api/catalog").json()])
    assert "secret" not in listed and "link/" not in listed


def test_workflow_file_inputs_through_symlink_are_refused(attack):
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "link/secret.png"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    r = attack.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400 and "1" in r.json()["node_errors"]
    prompt["1"]["inputs"]["image"] = "in.png"
    for prefix in ("input/x", "link/x", "../x", "/tmp/x"):
        prompt["2"]["inputs"]["filename_prefix"] = prefix
        r = attack.post("/prompt", json={"prompt": prompt})
        assert r.status_code == 400 and "2" in r.json()["node_errors"], prefix


def test_upload_into_a_symlinked_subfolder_is_refused(attack):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(buf, format="PNG")
    r = attack.post("/upload/image", files={"image": ("x.png", buf.getvalue())}, data={"subfolder": "link"})
    assert r.status_code == 403
    assert sorted(p.name for p in attack.outside.iterdir()) == ["secret.jsonl", "secret.png"]


@pytest.mark.parametrize("story, field", [
    ({"style": "ink <lora:{v}:1>", **STORY}, "story.style"),
    ({"characters": [{"name": "k", "description": "a cat", "trigger": "<lora:{v}:1> ohwx"}],
      "scenes": [{"prompt": "{k} sleeps"}]}, "story.characters.0.trigger"),
    ({"characters": [{"name": "k", "description": {"en": "a cat <lora:{v}:1>"}}], "scenes": [{"prompt": "{k}"}]},
     "story.characters.0.description.en"),
])
def test_a_lora_tag_in_any_text_of_a_story_is_refused(attack, story, field):
    """Style and character words end up in panel prompts, whose `<lora:>` tags the session loads: over
    HTTP a tag there would name a file outside the path policy, so it is refused as in a scene prompt."""
    r = attack.post("/api/jobs/storyboard", json={"story": _fill(story, str(attack.outside / "secret.safetensors"))})
    assert r.status_code == 422 and r.json()["field"] == field, r.text
