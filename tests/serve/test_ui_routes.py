"""The routes behind the web UI's LoRA list, "send to Generate" and training page, and the last
preview of a generate job (the finished picture)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
from PIL import Image

from loraflow.generate.infotext import format_infotext, infotext_to_config
from serve_helpers import TINY, wait_job


def test_lora_info_gives_the_fields_of_lora_info(server):
    info = server.get("/api/loras/info", params={"name": "style"}).json()
    # conftest's make_tiny_lora: a rank-4, alpha-4 peft LoRA on the tiny SDXL UNet's attention, diffusers keys
    assert (info["rank"], info["alpha"], info["type"], info["format"], info["family"]) == ("4", "4", "lora", "diffusers", "sdxl")
    assert info["text"].startswith("file:") and "base model:" in info["text"]
    missing = server.get("/api/loras/info", params={"name": "nope"})
    assert missing.status_code == 404 and "LoRA 'nope' not found" in missing.json()["error"]
    assert server.get("/api/loras/info", params={"name": "../etc/passwd"}).status_code == 403


def test_infotext_to_config_reads_back_what_a1111_text_says():
    text = format_infotext("a red circle <lora:ink:0.8>, white background", "blurry",
                           {"Steps": 12, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 6.5,
                            "Seed": 1234, "Size": (96, 64), "Model": "demo"})
    assert infotext_to_config(text) == {
        "prompt": "a red circle, white background", "negative_prompt": "blurry", "lora": ["ink:0.8"],
        "num_inference_steps": 12, "guidance_scale": 6.5, "seed": 1234, "width": 96, "height": 64,
        "scheduler": "DPM++ 2M Karras"}
    # a sampler loraflow does not have leaves the scheduler unset
    assert "scheduler" not in infotext_to_config("cat\nSteps: 2, Sampler: Restart, Seed: 1")


def test_infotext_route_and_its_errors(server):
    text = "cat\nSteps: 3, Sampler: Euler a, CFG scale: 2, Seed: 5, Size: 64x72"
    body = server.post("/api/infotext", json={"text": text}).json()
    assert (body["scheduler"], body["num_inference_steps"], body["height"]) == ("Euler a", 3, 72)
    bad = server.post("/api/infotext", json={"prompt": "cat"})
    assert bad.status_code == 422 and "text" in bad.json()["error"]
    wrong = server.post("/api/infotext", json={"text": "cat\nSteps: many, Sampler: Euler, Seed: 1"})
    assert wrong.status_code == 422 and "Steps 'many'" in wrong.json()["error"]


def test_generate_previews_end_on_the_finished_picture(server):
    job = server.post("/api/jobs/generate", json=TINY).json()
    previews = []
    with server.stream("GET", job["links"]["events"]) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "preview":
                previews.append(base64.b64decode(json.loads(line[6:])["jpeg"]))
    done = wait_job(server, job["id"])
    image = done["result"]["images"][0]
    saved = np.asarray(Image.open(io.BytesIO(server.get(image["url"]).content)).convert("RGB"), dtype=float)
    last = np.asarray(Image.open(io.BytesIO(previews[-1])).convert("RGB").resize((64, 64), Image.BILINEAR), dtype=float)
    assert len(previews) >= 1 and np.abs(last - saved).mean() < 12  # JPEG + resize error only


def test_train_accepts_yaml_text_and_names_the_key_of_bad_yaml(server):
    bad = server.post("/api/jobs/train", json="dataset: [unclosed")
    assert bad.status_code == 422 and "key 'config' is not valid YAML" in bad.json()["error"]
    missing = server.post("/api/jobs/train", json="model: tiny-sdxl\nmax_steps: 2\n")
    assert missing.status_code == 422 and "key 'dataset' is required" in missing.json()["error"]


def test_training_files_only_for_train_jobs(server):
    job = server.post("/api/jobs/generate", json=TINY).json()
    wait_job(server, job["id"])
    answer = server.get(f"/api/jobs/{job['id']}/training")
    assert answer.status_code == 422 and "not a train job" in answer.json()["error"]
    assert server.get("/api/jobs/nope/training").status_code == 404
