"""The jobs API through a real uvicorn server on loopback: submit, progress, result, history,
download, cancel, 429, 422s naming the field, auth, body limit, uploads."""
from __future__ import annotations

import io
import json

import httpx
import pytest
from PIL import Image

from serve_helpers import TINY, wait_job


def test_submit_progress_result_history_download(server):
    r = server.post("/api/jobs/generate", json={**TINY, "lora": ["style:0.8"], "num_images": 2})
    assert r.status_code == 202, r.text
    job = r.json()
    events = []
    with server.stream("GET", job["links"]["events"]) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            elif line.startswith("data: ") and events[-1] == "progress":
                events[-1] = ("progress", json.loads(line[6:]))
    progress = [e[1] for e in events if isinstance(e, tuple)]
    assert progress[-1] == {"value": 4, "max": 4, "node": None}  # 2 images x 2 steps
    assert "preview" in events and events[-1] == "status"
    done = wait_job(server, job["id"])
    assert done["status"] == "done" and done["error"] is None
    images = done["result"]["images"]
    assert [i["seed"] for i in images] == [1, 2]
    assert "<lora:style:0.8>" in images[0]["infotext"] and "Steps: 2" in images[0]["infotext"]
    png = server.get(images[0]["url"])
    assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
    assert server.get(f"/api/jobs/{job['id']}/files/{images[1]['filename']}").status_code == 200
    history = server.get("/api/jobs", params={"kind": "generate", "status": "done"}).json()["jobs"]
    assert [j["id"] for j in history] == [job["id"]]


def test_model_is_loaded_once_and_kept(server):
    ids = [server.post("/api/jobs/generate", json={**TINY, "seed": s}).json()["id"] for s in range(3)]
    assert all(wait_job(server, i)["status"] == "done" for i in ids)
    assert server.thread.state.models.loads == 1


@pytest.mark.parametrize("body, field", [
    ({**TINY, "num_inference_steps": 0}, "num_inference_steps"),
    ({**TINY, "width": 65}, "width"),
    ({**TINY, "guidance_scale": "high"}, "guidance_scale"),
    ({**TINY, "lora_rnk": 4}, "lora_rnk"),
    ({**TINY, "prompt": " "}, "prompt"),
    ({**TINY, "model": "tiny:sd3"}, "model"),
    ({**TINY, "scheduler": "warp drive"}, "scheduler"),
    ({**TINY, "allow_pickle": True}, "allow_pickle"),
    ({**TINY, "out": "/tmp/elsewhere"}, "out"),
    ({**TINY, "lora": ["style:strong"]}, "lora.0"),  # a weight that is no number (config.split_weighted)
])
def test_invalid_generate_is_422_naming_the_field(server, body, field):
    r = server.post("/api/jobs/generate", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and field in r.json()["error"]


def test_invalid_storyboard_names_the_story_field(server):
    r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": "title: x\nscenes: []\n"})
    assert r.status_code == 422 and r.json()["field"] == "story.scenes"
    r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl",
                                                  "story": {"scenes": [{"prompt": "a", "sed": 1}]}})
    assert r.status_code == 422 and "sed" in r.json()["error"]


def test_storyboard_job_renders_scenes_and_grid(server):
    story = ("title: t\ndefaults: {height: 64, width: 64, num_inference_steps: 2}\n"
             "grid: {columns: 2, width: 128, height: 64}\nscenes:\n  - {prompt: a cat}\n  - {prompt: a dog}\n")
    job = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": story}).json()
    done = wait_job(server, job["id"])
    assert done["status"] == "done", done["error"]
    assert len(done["result"]["images"]) == 2
    grid = server.get(done["result"]["grid"]["url"])
    assert Image.open(io.BytesIO(grid.content)).size == (128, 64)


TRAVERSALS = ["../../../etc/passwd", "/etc/passwd", "loras/../../x", "..", "a\\..\\..\\b", "~/x", "tiny-sdxl/../../.."]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_path_traversal_is_refused_everywhere(server, name, tmp_path):
    job_id = server.post("/api/jobs/generate", json=TINY).json()["id"]
    secret = server.thread.state.paths.outputs / "jobs.sqlite"
    assert secret.exists()
    refused = lambda r: r.status_code in (307, 400, 403, 404, 422) and b"SQLite" not in r.content  # noqa: E731
    assert refused(server.post("/api/jobs/generate", json={**TINY, "model": name}))
    assert refused(server.post("/api/jobs/generate", json={**TINY, "vae": name}))
    assert refused(server.post("/api/jobs/generate", json={**TINY, "lora": [name]}))
    assert refused(server.post("/api/jobs/generate", json={**TINY, "prompt": f"a cat <lora:{name}:1>"}))
    assert refused(server.post("/api/jobs/generate", json={**TINY, "init_image": name}))
    assert refused(server.post("/api/jobs/storyboard", json={"model": name, "story": {"scenes": [{"prompt": "a"}]}}))
    assert refused(server.get("/view", params={"filename": name}))
    assert refused(server.get("/view", params={"filename": "jobs.sqlite"}))
    assert refused(server.get("/view", params={"filename": "x.png", "subfolder": name}))
    assert refused(server.get("/view", params={"filename": "x.png", "type": name}))
    # in URL paths clients normalise `..` away (to another route); encoded it reaches the route
    for route in (f"/api/jobs/{job_id}/files/", "/static/"):
        leaked = server.get(route + name.replace("/", "%2F").replace(".", "%2E"))
        assert refused(leaked) or (leaked.status_code == 200 and b"SQLite" not in leaked.content)
        assert refused(server.get(route + "%2E%2E%2F%2E%2E%2Fjobs.sqlite"))
    assert refused(server.post("/upload/image", files={"image": ("x.png", _png())}, data={"subfolder": name}))
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": name}},
              "2": {"class_type": "LoadImage", "inputs": {"image": name}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}}}
    r = server.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400 and "2" in r.json()["node_errors"]


def test_save_image_prefix_cannot_escape_outputs(server, tmp_path):
    server.post("/upload/image", files={"image": ("in.png", _png())})
    prompt = {"2": {"class_type": "LoadImage", "inputs": {"image": "in.png"}},
              "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "../../escaped"}}}
    r = server.post("/prompt", json={"prompt": prompt})  # refused when submitted, before anything runs
    assert r.status_code == 400 and r.json()["node_errors"]["3"]["errors"][0]["details"] == "filename_prefix"
    assert not list(tmp_path.parent.rglob("escaped*"))


def _png(size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_uploads_are_checked_as_images(server):
    ok = server.post("/upload/image", files={"image": ("../../a b.png", _png())})
    assert ok.status_code == 200 and ok.json() == {"name": "a b.png", "subfolder": "", "type": "input"}
    assert server.get("/view", params={"filename": "a b.png", "type": "input"}).status_code == 200
    bad = server.post("/upload/image", files={"image": ("x.png", b"not an image at all")})
    assert bad.status_code == 422
    truncated = server.post("/upload/image", files={"image": ("x.png", _png()[:60])})
    assert truncated.status_code == 422


def test_body_size_limit(start_server):
    url, _ = start_server(max_body_mb=0.01)
    r = httpx.post(f"{url}/api/jobs/generate", json={**TINY, "prompt": "x" * 20000})
    assert r.status_code == 413
    r = httpx.post(f"{url}/upload/image", files={"image": ("big.png", _png((400, 400)) + b"\0" * 20000)})
    assert r.status_code == 413


def test_full_queue_is_429_and_cancel(start_server):
    url, _ = start_server(queue_size=2)
    with httpx.Client(base_url=url, timeout=60) as client:
        slow = client.post("/api/jobs/generate", json={**TINY, "num_inference_steps": 400}).json()
        wait_job(client, slow["id"], until=("running",))
        queued = [client.post("/api/jobs/generate", json={**TINY, "seed": s}) for s in range(3)]
        assert [r.status_code for r in queued] == [202, 202, 429]
        assert "full" in queued[2].json()["error"] and queued[2].headers["retry-after"]
        # cancel a queued job at once, the running one at its next step
        assert client.post(f"/api/jobs/{queued[0].json()['id']}/cancel").json()["status"] == "cancelled"
        assert client.post(f"/api/jobs/{slow['id']}/cancel").status_code == 200
        assert wait_job(client, slow["id"], timeout=20)["status"] == "cancelled"
        assert wait_job(client, queued[1].json()["id"])["status"] == "done"
        assert client.get(f"/api/jobs/{queued[0].json()['id']}").json()["status"] == "cancelled"
        assert client.post(f"/api/jobs/{queued[1].json()['id']}/cancel").status_code == 409
        # a cancelled job can be run again
        again = client.post(f"/api/jobs/{queued[0].json()['id']}/requeue")
        assert again.status_code == 202
        assert wait_job(client, queued[0].json()["id"])["status"] == "done"


def test_auth_token_and_cross_origin(start_server):
    url, _ = start_server(auth_token="s3cret")
    assert httpx.get(f"{url}/api/health").status_code == 401
    assert httpx.get(f"{url}/api/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(f"{url}/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert httpx.get(f"{url}/api/health?token=s3cret").status_code == 200
    assert httpx.get(f"{url}/").status_code == 200  # the UI page itself is public; it asks for the token
    evil = httpx.post(f"{url}/api/jobs/generate", json=TINY,
                      headers={"Authorization": "Bearer s3cret", "Origin": "http://evil.example"})
    assert evil.status_code == 403
    assert "access-control-allow-origin" not in evil.headers  # CORS is off by default


def test_serve_cli_help_does_not_import_fastapi_or_torch():
    import subprocess
    import sys

    code = ("import sys; from loraflow.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('fastapi', 'uvicorn', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("character, field", [
    ({"name": "hero", "description": "a cat", "lora": "../../../etc/passwd"}, None),
    ({"name": "hero", "description": "a cat", "references": ["/etc/passwd"]}, None),
    ({"name": "hero", "description": "a cat", "references": ["../jobs.sqlite"]}, None),
    ({"name": "hero", "description": "a cat", "references": ["missing.png"]}, "story.characters.0.references.0"),
    ({"name": "villain", "description": "a cat"}, "story.scenes[0].cast"),
])
def test_story_characters_name_only_files_the_server_allows(server, character, field):
    story = {"characters": [character], "scenes": [{"prompt": "{hero} sleeps", "cast": ["hero"]}]}
    r = server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": story})
    assert r.status_code in (400, 403, 404, 422) and b"SQLite" not in r.content, r.text
    if field:
        assert r.json()["field"] == field


def test_storyboard_job_with_a_cast_resolves_the_character_lora(server):
    story = {"defaults": {"height": 64, "width": 64, "num_inference_steps": 2},
             "characters": [{"name": "hero", "description": "an orange cat", "lora": "style", "lora_weight": 0.5}],
             "scenes": [{"prompt": "{hero} sleeps"}]}
    done = wait_job(server, server.post("/api/jobs/storyboard", json={"model": "tiny-sdxl", "story": story}).json()["id"])
    assert done["status"] == "done", done["error"]
    scene = done["result"]["story"]["scenes"][0]
    assert scene["prompt"] == "an orange cat sleeps" and "<lora:style:0.5>" in scene["infotext"]
