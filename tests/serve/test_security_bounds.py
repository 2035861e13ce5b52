"""Bounded work and malformed input: limits checked at submission (422 naming the field), every bad
body a 4xx, workflow cycles and long chains without recursion, ComfyUI's closing websocket message
after a failure, and a wedged job that ignores its cancel never blocks the queue."""
from __future__ import annotations

import dataclasses
import json
import re
import threading
import time

import httpx
import pytest
import websockets.sync.client as websockets_sync

from serve_helpers import TINY, wait_job


def test_limits_default_to_the_flags_defaults_and_follow_the_flags():
    """`Limits` holds no defaults of its own: a server started with no flags has `Limits()`."""
    from loraflow.serve.limits import Limits
    from loraflow.serve.options import ServeOptions

    defaults = ServeOptions()
    bounds = [f.name for f in dataclasses.fields(Limits) if f.name != "max_json_depth"]
    assert bounds and all(getattr(Limits(), name) == getattr(defaults, name) for name in bounds)
    assert Limits.from_options(ServeOptions(max_steps=7, max_scenes=3)) == \
        dataclasses.replace(Limits(), max_steps=7, max_scenes=3)


@pytest.mark.parametrize("kind,body,field", [
    ("generate", {**TINY, "width": 4096, "height": 4096}, "width"),
    ("generate", {**TINY, "batch_size": 32, "num_images": 32}, "batch_size"),
    ("storyboard", {"story": {"defaults": {"num_inference_steps": 100000}, "scenes": [{"prompt": "a"}]}},
     "story.defaults.num_inference_steps"),
    ("storyboard", {"story": {"defaults": {"width": 100000, "height": 100000}, "scenes": [{"prompt": "a"}]}},
     "story.defaults.width"),
    ("storyboard", {"story": {"grid": {"width": 100000, "height": 100000}, "scenes": [{"prompt": "a"}]}},
     "story.grid.width"),
    ("storyboard", {"grid_width": 100000, "grid_height": 100000, "story": {"scenes": [{"prompt": "a"}]}}, "grid_width"),
    ("storyboard", {"best_of": 64, "story": {"scenes": [{"prompt": "a"}, {"prompt": "b"}]}}, "best_of"),
])
def test_work_beyond_the_limits_is_422_naming_the_field(server, kind, body, field):
    r = server.post(f"/api/jobs/{kind}", json=body)
    assert r.status_code == 422 and r.json()["field"] == field, r.text
    assert server.get("/api/jobs").json()["jobs"] == []  # nothing was queued


def test_limits_follow_the_server_options(start_server):
    url, _ = start_server(max_pixels=64 * 64, max_steps=3)
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.post("/api/jobs/generate", json={**TINY, "width": 72}).json()["field"] == "width"
        assert client.post("/api/jobs/generate", json={**TINY, "num_inference_steps": 4}).json()["field"] == \
            "num_inference_steps"


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("path", ["/history", "/queue", "/api/history", "/api/queue"])
@pytest.mark.parametrize("body,field", [
    (b"[1, 2]", None), (b"{not json", None), (b'{"delete": 5}', "delete"), (b'{"delete": [{"a": 1}]}', "delete"),
    (b'{"clear": "yes"}', "clear"), (b'{"purge": true}', "purge"), (DEEP, None), (b"\xff\xfe", None),
])
def test_malformed_history_and_queue_bodies_are_4xx(server, path, body, field):
    r = server.post(path, content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert r.json().get("field") == field


@pytest.mark.parametrize("body", [b"[]", b"{bad", DEEP, b'{"a":' * 5000 + b"1" + b"}" * 5000, b"null", b"5"])
def test_malformed_job_bodies_are_4xx(server, body):
    for kind in ("generate", "storyboard", "train", "data-filter"):
        r = server.post(f"/api/jobs/{kind}", content=body, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500 and "error" in r.json(), (kind, r.status_code)


def test_deep_or_invalid_prompt_is_400(server):
    for body in (DEEP, b"{bad", b'{"prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        assert server.post("/prompt", content=body).status_code == 400


def _scale(src: str) -> dict:
    return {"class_type": "ImageScale", "inputs": {"image": [src, 0], "upscale_method": "nearest-exact",
                                                   "width": 8, "height": 8, "crop": "disabled"}}


def test_workflow_cycle_is_a_400_naming_the_cycle(server):
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "c"}},
              "2": _scale("3"), "3": _scale("4"), "4": _scale("2")}
    r = server.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400
    message = r.json()["error"]["message"]
    match = re.fullmatch(r"dependency cycle: (.+)", message)
    assert match, message
    nodes = match.group(1).split(" -> ")
    assert nodes[0] == nodes[-1] and sorted(nodes[:-1]) == ["2", "3", "4"]
    assert set(r.json()["node_errors"]) == {"2", "3", "4"}


def test_a_node_linking_to_itself_is_a_cycle(server):
    prompt = {"1": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "c"}}, "2": _scale("2")}
    assert server.post("/prompt", json={"prompt": prompt}).json()["error"]["message"] == "dependency cycle: 2 -> 2"


def _chain(n: int) -> dict:
    prompt = {"0": {"class_type": "LoadImage", "inputs": {"image": "in.png"}}}
    for i in range(1, n):
        prompt[str(i)] = _scale(str(i - 1))
    prompt["save"] = {"class_type": "SaveImage", "inputs": {"images": [str(n - 1), 0], "filename_prefix": "chain"}}
    return prompt


def _upload(client) -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
    assert client.post("/upload/image", files={"image": ("in.png", buf.getvalue())}).status_code == 200


def test_a_3000_node_chain_is_refused_cleanly_by_default_and_runs_when_allowed(server, start_server):
    _upload(server)
    r = server.post("/prompt", json={"prompt": _chain(3000)})
    assert r.status_code == 400 and "at most 500" in r.json()["error"]["message"]
    url, _ = start_server(max_workflow_nodes=4000)
    with httpx.Client(base_url=url, timeout=60) as client:
        _upload(client)
        r = client.post("/prompt", json={"prompt": _chain(3000)})
        assert r.status_code == 200, r.text[:300]
        job = wait_job(client, r.json()["prompt_id"], timeout=120)
        assert job["status"] == "done", job["error"]


def test_prompt_with_the_demo_checkpoint_runs(server):
    from loraflow.serve.comfy.export import api_workflow

    assert "demo" in server.get("/object_info/CheckpointLoaderSimple").text
    prompt = api_workflow("demo", None, "a cat", seed=1, steps=2, width=64, height=64, filename_prefix="demo")
    r = server.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    job = wait_job(server, r.json()["prompt_id"], timeout=120)
    assert job["status"] == "done", job["error"]


def test_websocket_gets_the_closing_executing_message_after_a_failure(start_server, tmp_path):
    models = tmp_path / "broken-models"
    (models / "broken").mkdir(parents=True)
    (models / "broken" / "model_index.json").write_text("{not a model index")
    url, _ = start_server(models_dir=str(models))
    from loraflow.serve.comfy.export import api_workflow

    prompt = api_workflow("broken", None, "a cat", steps=2, width=64, height=64)
    with httpx.Client(base_url=url, timeout=60) as client, \
            websockets_sync.connect(url.replace("http", "ws") + "/ws?clientId=c1") as ws:
        r = client.post("/prompt", json={"prompt": prompt, "client_id": "c1"})
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        seen = []
        while True:  # ComfyUI's websockets_api_example.py waits for exactly this message
            raw = ws.recv(timeout=60)
            message = json.loads(raw) if isinstance(raw, str) else {}
            seen.append(message.get("type"))
            data = message.get("data", {})
            if message.get("type") == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                break
        assert "execution_error" in seen


@pytest.fixture
def wedged(monkeypatch):
    """The first generate job ignores cancel until released; later ones run normally."""
    from loraflow.serve import jobs

    release, calls = threading.Event(), []
    real = jobs.JOB_KINDS["generate"]

    def run(ctx, job):
        calls.append(ctx.job.id)
        if len(calls) == 1:
            while not release.wait(0.05):  # a stuck call: never looks at ctx.cancel
                pass
            return {}
        return real.run(ctx, job)

    monkeypatch.setitem(jobs.JOB_KINDS, "generate", dataclasses.replace(real, run=run))
    yield release
    release.set()


def test_a_wedged_job_is_given_up_after_its_cancel_and_the_queue_goes_on(start_server, wedged):
    url, _ = start_server(cancel_grace=0.5)
    with httpx.Client(base_url=url, timeout=60) as client:
        stuck = client.post("/api/jobs/generate", json=TINY).json()
        wait_job(client, stuck["id"], until=("running",))
        after = client.post("/api/jobs/generate", json=TINY).json()
        assert client.post(f"/api/jobs/{stuck['id']}/cancel").status_code == 200
        ended = wait_job(client, stuck["id"], timeout=30)
        assert ended["status"] == "failed" and "did not stop" in ended["error"]
        assert wait_job(client, after["id"], timeout=120)["status"] == "done"
        wedged.set()  # the stuck call returns at last: its outcome is not recorded over the failure
        time.sleep(0.3)
        assert client.get(f"/api/jobs/{stuck['id']}").json()["status"] == "failed"


def test_a_job_past_the_time_limit_is_stopped(start_server):
    url, _ = start_server(job_time_limit=0.5)
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/api/jobs/generate", json={**TINY, "num_inference_steps": 1000}).json()
        ended = wait_job(client, job["id"], timeout=120)
        assert ended["status"] == "failed" and "time limit" in ended["error"]
