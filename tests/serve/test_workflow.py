"""ComfyUI API-format prompts: the default text-to-image graph with a LoRA runs and saves an image,
websocket messages have ComfyUI's shapes, unchanged nodes are cached, errors are per node."""
from __future__ import annotations

import io
import json

import pytest
import websockets.sync.client as websockets_sync
from PIL import Image

from serve_helpers import wait_job


def default_graph(seed: int = 1, lora: str = "style.safetensors") -> dict:
    from loraflow.serve.comfy.export import api_workflow

    return api_workflow("tiny-sdxl", lora, "an orange cat", "blurry", seed=seed, steps=2, cfg=5.0,
                        width=64, height=64, filename_prefix="wf/cat")


def run(server, prompt, client_id="test-client"):
    r = server.post("/prompt", json={"prompt": prompt, "client_id": client_id})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    job = wait_job(server, body["prompt_id"])
    history = server.get(f"/history/{body['prompt_id']}").json()[body["prompt_id"]]
    return job, history


def test_default_graph_with_lora_runs_and_caches(server):
    ws_url = str(server.base_url).replace("http", "ws") + "/ws?clientId=test-client"
    with websockets_sync.connect(ws_url) as ws:
        first = json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == "test-client"
        job, history = run(server, default_graph(seed=1))
        messages = []
        while not any(m.get("type") == "execution_success" for m in messages if isinstance(m, dict)):
            raw = ws.recv(timeout=30)
            messages.append(json.loads(raw) if isinstance(raw, str) else ("binary", raw[:8]))
    assert job["status"] == "done", job["error"]
    types = [m["type"] for m in messages if isinstance(m, dict)]
    for expected in ("execution_start", "execution_cached", "executing", "progress", "executed", "execution_success"):
        assert expected in types
    progress = [m["data"] for m in messages if isinstance(m, dict) and m["type"] == "progress"]
    assert progress[-1] == {"value": 2, "max": 2, "prompt_id": job["id"], "node": "3"}
    assert ("binary", b"\x00\x00\x00\x01\x00\x00\x00\x01") in messages  # PREVIEW_IMAGE, JPEG
    image = history["outputs"]["9"]["images"][0]
    assert image == {"filename": "cat_00001_.png", "subfolder": "wf", "type": "output"}
    assert history["status"] == {**history["status"], "status_str": "success", "completed": True}
    png = server.get("/view", params=image)
    assert png.status_code == 200
    saved = Image.open(io.BytesIO(png.content))
    assert saved.size == (64, 64) and json.loads(saved.text["prompt"])["10"]["class_type"] == "LoraLoader"

    # same graph, new seed: only KSampler and what follows it run again
    _, history2 = run(server, default_graph(seed=2))
    cached = next(m[1]["nodes"] for m in history2["status"]["messages"] if m[0] == "execution_cached")
    assert sorted(cached) == ["10", "4", "5", "6", "7"]
    assert job_result(server, history2)["executed"] == ["3", "8", "9"]
    assert history2["outputs"]["9"]["images"][0]["filename"] == "cat_00002_.png"
    # nothing changed: nothing runs, the saved image is reported from the cache
    _, history3 = run(server, default_graph(seed=2))
    assert job_result(server, history3)["executed"] == []
    assert history3["outputs"] == history2["outputs"]


def job_result(server, history) -> dict:
    return server.get(f"/api/jobs/{history['prompt'][1]}").json()["result"]


def test_lora_changes_the_image_and_weight_zero_does_not(server):
    def pixels(graph):
        _, history = run(server, graph)
        return server.get("/view", params=history["outputs"]["9"]["images"][0]).content

    def decoded(data):
        return Image.open(io.BytesIO(data)).tobytes()

    base, styled = default_graph(lora=None), default_graph()
    zero = default_graph()
    zero["10"]["inputs"].update(strength_model=0.0, strength_clip=0.0)
    assert decoded(pixels(styled)) != decoded(pixels(base))
    assert decoded(pixels(zero)) == decoded(pixels(base))


def test_overwritten_lora_file_reruns_the_lora_node_and_changes_the_image(server):
    """Same graph, same LoRA name, new bytes on disk: LoraLoader runs again and the new weights are
    used (the picture equals one made with those weights under another name)."""
    import os

    import torch
    from safetensors.torch import load_file, save_file

    loras = server.thread.state.paths.loras
    swap, flipped = loras / "swap-test.safetensors", loras / "swap-test-flipped.safetensors"
    original = load_file(loras / "style.safetensors")
    # lora_B negated: the same shapes and size on disk, the opposite weight update
    save_file({k: -v if ".lora_B." in k or "lora_up" in k else v for k, v in original.items()}, flipped)
    save_file(original, swap)

    def image_of(lora):
        job, history = run(server, default_graph(lora=lora))
        assert job["status"] == "done", job["error"]
        data = server.get("/view", params=history["outputs"]["9"]["images"][0]).content
        return job_result(server, history)["executed"], Image.open(io.BytesIO(data)).tobytes()

    try:
        _, before = image_of(swap.name)
        stat = swap.stat()
        save_file(load_file(flipped), swap)  # overwrite in place, as a re-trained LoRA would be
        # a user's next run is seconds later; make the mtime differ by that much whatever the clock step
        os.utime(swap, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
        executed, after = image_of(swap.name)
        _, reference = image_of(flipped.name)
    finally:
        swap.unlink(missing_ok=True)
        flipped.unlink(missing_ok=True)
    assert "10" in executed  # the LoraLoader node ran again
    assert after != before and after == reference


def test_node_errors_name_the_node(server):
    graph = default_graph()
    graph["3"]["inputs"]["positive"] = ["5", 0]  # a LATENT where CONDITIONING is expected
    graph["3"]["inputs"]["steps"] = 0
    del graph["8"]["inputs"]["vae"]
    r = server.post("/prompt", json={"prompt": graph})
    assert r.status_code == 400
    body = r.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    errors = {nid: sorted(e["type"] for e in v["errors"]) for nid, v in body["node_errors"].items()}
    assert errors == {"3": ["return_type_mismatch", "value_smaller_than_min"], "8": ["required_input_missing"]}
    assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]

    graph = default_graph()
    graph["11"] = {"class_type": "ExecutePython", "inputs": {"code": "import os"}}
    body = server.post("/prompt", json={"prompt": graph}).json()
    assert body["error"]["type"] == "invalid_prompt" and "ExecutePython" in body["error"]["message"]
    assert "KSampler" in body["error"]["details"]  # lists the supported node types


def test_execution_error_is_reported_on_its_node(server):
    graph = default_graph()
    graph["3"]["inputs"]["scheduler"] = "karras"  # euler + karras: no such sampler here
    job, history = run(server, graph)
    assert job["status"] == "failed" and "node 3 (KSampler)" in job["error"]
    error = next(m[1] for m in history["status"]["messages"] if m[0] == "execution_error")
    assert error["node_id"] == "3" and "karras" in error["exception_message"]
    assert history["status"]["status_str"] == "error"


def test_object_info_queue_and_export(server, tmp_path):
    info = server.get("/object_info").json()
    for name in ("CheckpointLoaderSimple", "LoraLoader", "CLIPTextEncode", "EmptyLatentImage", "KSampler",
                 "KSamplerAdvanced", "VAEDecode", "VAEEncode", "SaveImage", "LoadImage", "ControlNetLoader",
                 "ControlNetApplyAdvanced", "ImageScale"):
        assert name in info
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0][0] == "tiny-sdxl"
    assert info["LoraLoader"]["input"]["required"]["lora_name"][0] == ["style.safetensors"]
    assert info["KSampler"]["output"] == ["LATENT"]
    assert server.get("/api/object_info/KSampler").json()["KSampler"]["input"]["required"]["seed"][0] == "INT"
    assert server.get("/queue").json() == {"queue_running": [], "queue_pending": []}

    from loraflow.cli import main

    out = tmp_path / "wf.json"
    assert main(["workflow", "export", "--lora", "loras/style.safetensors", "--prompt", "an orange cat",
                 "--model", "tiny-sdxl", "--steps", "2", "--width", "64", "--height", "64", "--out", str(out)]) == 0
    ui = json.loads(out.with_name("wf.ui.json").read_text())
    assert {n["type"] for n in ui["nodes"]} >= {"LoraLoader", "KSampler", "SaveImage"} and len(ui["links"]) == 11
    job, history = run(server, json.loads(out.read_text()))
    assert job["status"] == "done" and history["outputs"]["9"]["images"]


def test_img2img_graph_with_upload_scale_and_vae_encode(server):
    buf = io.BytesIO()
    Image.new("RGB", (80, 48), (20, 120, 200)).save(buf, format="PNG")
    name = server.post("/upload/image", files={"image": ("ref.png", buf.getvalue())}).json()["name"]
    graph = default_graph(lora=None)
    graph.update({
        "20": {"class_type": "LoadImage", "inputs": {"image": name}},
        "21": {"class_type": "ImageScale", "inputs": {"image": ["20", 0], "upscale_method": "bilinear",
                                                      "width": 64, "height": 64, "crop": "center"}},
        "22": {"class_type": "VAEEncode", "inputs": {"pixels": ["21", 0], "vae": ["4", 2]}},
    })
    graph["3"]["inputs"].update(latent_image=["22", 0], denoise=0.5, steps=4)
    job, history = run(server, graph)
    assert job["status"] == "done", job["error"]
    assert history["outputs"]["9"]["images"][0]["filename"].startswith("cat_")


def test_controlnet_workflow_runs_and_errors_per_node(server):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(buf, format="PNG")
    name = server.post("/upload/image", files={"image": ("hint.png", buf.getvalue())}).json()["name"]
    graph = default_graph(lora=None)
    graph.update({
        "30": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "tiny-cn"}},
        "31": {"class_type": "LoadImage", "inputs": {"image": name}},
        "32": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["30", 0], "image": ["31", 0],
            "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
    })
    graph["3"]["inputs"].update(positive=["32", 0], negative=["32", 1])
    job, history = run(server, graph)
    assert job["status"] == "done", job["error"]
    _, plain = run(server, default_graph(lora=None))
    view = lambda h: Image.open(io.BytesIO(server.get("/view", params=h["outputs"]["9"]["images"][0]).content))  # noqa: E731
    assert view(history).tobytes() != view(plain).tobytes()  # the ControlNet steered the image
    graph["32"]["inputs"]["start_percent"] = 0.9
    graph["32"]["inputs"]["end_percent"] = 0.1
    job, history = run(server, graph)
    error = next(m[1] for m in history["status"]["messages"] if m[0] == "execution_error")
    assert job["status"] == "failed" and error["node_id"] == "32" and "start_percent" in error["exception_message"]
