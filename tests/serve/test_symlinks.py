"""A symlink inside a served folder that leads out of it is refused by every route that takes a name.

Each served folder (models: loras / checkpoints / controlnet; outputs: output / input / temp and a
job's files; data) gets a link to a file and a link to a folder outside all of them. Names through
those links must be refused (400/403/404/422 or a per-node error), must not leak the outside file's
bytes, and must not write outside. Checked through the HTTP routes only, so it holds whichever
module does the path check."""
from __future__ import annotations

import io
import shutil

import httpx
import pytest
from PIL import Image

REFUSED = (400, 403, 404, 422)
SECRET_COLOUR = (1, 2, 3)  # the outside picture; its bytes must never come back


@pytest.fixture(scope="module")
def linked(models_dir, tmp_path_factory):
    """One server (for the module: starting one per test costs seconds) whose folders hold links to
    `outside/`; yields (client, outside folder, job id). Tests must not change the links."""
    from loraflow.serve.options import ServeOptions
    from loraflow.serve.server import ServerThread

    tmp_path = tmp_path_factory.mktemp("linked")
    outside = tmp_path / "outside"
    (outside / "dataset" / "train").mkdir(parents=True)
    Image.new("RGB", (32, 32), SECRET_COLOUR).save(outside / "secret.png")
    Image.new("RGB", (64, 64), SECRET_COLOUR).save(outside / "dataset" / "train" / "0.png")
    (outside / "dataset" / "train" / "metadata.csv").write_text("file_name,text\n0.png,a square\n", encoding="utf-8")
    (outside / "input.jsonl").write_text('{"text": "a", "image": []}\n', encoding="utf-8")
    shutil.copy(models_dir / "loras" / "style.safetensors", outside / "secret.safetensors")
    models, outputs, data = tmp_path / "models", tmp_path / "outputs", tmp_path / "data"
    shutil.copytree(models_dir / "tiny-sdxl", models / "tiny-sdxl")  # real files inside, for valid graphs
    shutil.copytree(models_dir / "controlnet" / "tiny-cn", models / "controlnet" / "tiny-cn")
    shutil.copytree(models_dir / "loras", models / "loras")
    links = {
        models / "loras" / "evil.safetensors": outside / "secret.safetensors",
        models / "loras" / "evil_dir": outside,
        models / "checkpoints" / "evil-model": models_dir / "tiny-sdxl",
        models / "controlnet" / "evil-cn": models_dir / "controlnet" / "tiny-cn",
        outputs / "evil.png": outside / "secret.png",
        outputs / "evil_dir": outside,
        outputs / "input" / "evil.png": outside / "secret.png",
        outputs / "input" / "evil-upload.png": outside / "secret.png",  # the upload test replaces this one
        outputs / "input" / "evil_dir": outside,
        outputs / "temp" / "evil.png": outside / "secret.png",
        data / "evil": outside / "dataset",
        data / "evil.jsonl": outside / "input.jsonl",
    }
    for link, target in links.items():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target, target_is_directory=target.is_dir())
    server = ServerThread(ServeOptions(port=0, models_dir=str(models), outputs_dir=str(outputs), data_dir=str(data),
                                       device="cpu"))
    try:
        with httpx.Client(base_url=server.start(), timeout=60) as client:
            job = {"model": "tiny:sdxl", "prompt": "a", "width": 64, "height": 64, "num_inference_steps": 1, "seed": 1}
            job_id = client.post("/api/jobs/generate", json=job).json()["id"]
            job_dir = outputs / "jobs" / job_id
            job_dir.mkdir(parents=True, exist_ok=True)
            (job_dir / "evil.png").symlink_to(outside / "secret.png")
            yield client, outside, job_id
    finally:
        server.stop()


def secret_bytes(outside) -> bytes:
    return (outside / "secret.png").read_bytes()


def assert_refused(response, outside):
    assert response.status_code in REFUSED, (response.request.url, response.status_code, response.text[:200])
    assert secret_bytes(outside) not in response.content


def test_reading_through_an_outward_link_is_refused(linked):
    client, outside, job_id = linked
    for kind in ("output", "input", "temp"):
        assert_refused(client.get("/view", params={"filename": "evil.png", "type": kind}), outside)
        assert_refused(client.get("/view", params={"filename": "secret.png", "subfolder": "evil_dir", "type": kind}),
                       outside)
    assert_refused(client.get(f"/api/jobs/{job_id}/files/evil.png"), outside)


def test_jobs_naming_an_outward_link_are_refused(linked):
    client, outside, _ = linked
    base = {"model": "tiny:sdxl", "prompt": "a", "width": 64, "height": 64, "num_inference_steps": 1}
    for body in ({"model": "evil-model"}, {"vae": "evil-model"}, {"lora": ["evil"]}, {"lora": ["evil_dir/secret"]},
                 {"prompt": "a <lora:evil:1>"}, {"init_image": "evil.png"}, {"init_image": "evil_dir/secret.png"},
                 {"control": [{"type": "raw", "image": "secret.png", "model": "evil-cn"}]}):
        assert_refused(client.post("/api/jobs/generate", json={**base, **body}), outside)
    train = {"model": "tiny:sdxl", "resolution": 64, "batch_size": 1, "max_steps": 1}
    assert_refused(client.post("/api/jobs/train", json={**train, "dataset": "evil"}), outside)
    recipe = {"dataset_path": "evil.jsonl", "export_path": "out/result.jsonl", "process": []}
    assert_refused(client.post("/api/jobs/data-filter", json={"recipe": recipe}), outside)
    recipe = {"dataset_path": "evil/../input.jsonl", "export_path": "evil/result.jsonl", "process": []}
    assert_refused(client.post("/api/jobs/data-filter", json={"recipe": recipe}), outside)


def comfy_graph(ckpt="tiny-sdxl", lora="style.safetensors", image=None, controlnet=None) -> dict:
    from loraflow.serve.comfy.export import api_workflow

    graph = api_workflow(ckpt, lora, "a cat", "", seed=1, steps=1, cfg=5.0, width=64, height=64, filename_prefix="x")
    if image or controlnet:
        graph.update({
            "30": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet or "tiny-cn"}},
            "31": {"class_type": "LoadImage", "inputs": {"image": image or "ok.png"}},
            "32": {"class_type": "ControlNetApplyAdvanced", "inputs": {
                "positive": ["6", 0], "negative": ["7", 0], "control_net": ["30", 0], "image": ["31", 0],
                "strength": 0.8, "start_percent": 0.0, "end_percent": 1.0}},
        })
        graph["3"]["inputs"].update(positive=["32", 0], negative=["32", 1])
    return graph


@pytest.mark.parametrize("node,change", [("4", {"ckpt": "evil-model"}), ("10", {"lora": "evil.safetensors"}),
                                         ("10", {"lora": "evil_dir/secret.safetensors"}),
                                         ("31", {"image": "evil.png"}), ("30", {"controlnet": "evil-cn"})])
def test_comfy_nodes_naming_an_outward_link_fail_on_that_node(linked, node, change):
    """Refused when the graph is checked (400, node_errors) or when the node runs (execution_error)."""
    from serve_helpers import wait_job

    client, outside, _ = linked
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(png, format="PNG")
    assert client.post("/upload/image", files={"image": ("ok.png", png.getvalue())}).status_code == 200
    r = client.post("/prompt", json={"prompt": comfy_graph(**change)})
    if r.status_code == 400:
        assert node in r.json()["node_errors"], r.text
        return
    assert r.status_code == 200, r.text
    job = wait_job(client, r.json()["prompt_id"])
    history = client.get(f"/history/{job['id']}").json()[job["id"]]
    errors = [m[1] for m in history["status"]["messages"] if m[0] == "execution_error"]
    assert job["status"] == "failed" and errors and errors[0]["node_id"] == node, (job, errors)
    assert not history["outputs"]


def test_the_same_graphs_run_without_the_links(linked):
    """The graphs above are valid apart from the linked name (so the refusals are about the links)."""
    from serve_helpers import wait_job

    client, _, _ = linked
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(png, format="PNG")
    client.post("/upload/image", files={"image": ("ok.png", png.getvalue())})
    r = client.post("/prompt", json={"prompt": comfy_graph(image="ok.png", controlnet="tiny-cn")})
    assert r.status_code == 200, r.text
    assert wait_job(client, r.json()["prompt_id"])["status"] == "done"


def test_uploads_never_write_through_an_outward_link(linked):
    client, outside, _ = linked
    before = {p.name: p.read_bytes() for p in outside.iterdir() if p.is_file()}
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(png, format="PNG")
    assert_refused(client.post("/upload/image", files={"image": ("x.png", png.getvalue())},
                               data={"subfolder": "evil_dir"}), outside)
    # replacing the link itself is fine; writing through it into outside/ is not
    client.post("/upload/image", files={"image": ("evil-upload.png", png.getvalue())}, data={"overwrite": "true"})
    assert {p.name: p.read_bytes() for p in outside.iterdir() if p.is_file()} == before


def test_listings_leave_out_outward_links(linked):
    client, outside, _ = linked
    catalog = client.get("/api/catalog").json()
    names = catalog["models"] + catalog["loras"] + catalog["controlnets"]
    for folder in ("loras", "checkpoints", "controlnet"):
        names += client.get(f"/models/{folder}").json()
    assert not [n for n in names if "evil" in n], names
