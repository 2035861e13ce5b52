"""Train and data-filter jobs through the server: progress per training step, cancel, results."""
from __future__ import annotations

import csv
import json
import time

import httpx
import pytest
from PIL import Image

from serve_helpers import wait_job


@pytest.fixture
def data_server(start_server, tmp_path):
    data = tmp_path / "data"
    train = data / "shapes" / "train"
    train.mkdir(parents=True)
    rows = []
    for i, colour in enumerate(["red", "green", "blue", "yellow"]):
        Image.new("RGB", (64 + 16 * i, 64), colour).save(train / f"{i}.png")
        rows.append({"text": f"a {colour} square", "image": [str(train / f"{i}.png")]})
    with open(train / "metadata.csv", "w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "text"])
        writer.writerows([[f"{i}.png", r["text"]] for i, r in enumerate(rows)])
    (data / "input.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    url, thread = start_server(data_dir=str(data))
    with httpx.Client(base_url=url, timeout=60) as client:
        client.data_dir = data
        yield client


TRAIN = {"model": "tiny-sdxl", "dataset": "shapes", "resolution": 64, "batch_size": 2, "lora_rank": 4, "seed": 0}


def test_train_job_reports_each_step_and_writes_the_lora(data_server):
    job = data_server.post("/api/jobs/train", json={**TRAIN, "max_steps": 3}).json()
    progress = []
    with data_server.stream("GET", job["links"]["events"]) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "progress":
                progress.append(json.loads(line[6:])["value"])
    assert progress == [1, 2, 3]
    done = wait_job(data_server, job["id"], timeout=120)
    assert done["status"] == "done", done["error"]
    assert done["result"]["steps"] == 3 and done["result"]["files"]["lora"].endswith(".safetensors")


def test_running_train_job_can_be_cancelled(data_server):
    job = data_server.post("/api/jobs/train", json={**TRAIN, "max_steps": 100000}).json()
    wait_job(data_server, job["id"], timeout=120, until=("running",))
    deadline = time.monotonic() + 120
    while True:  # until training has started its steps; a job that ended instead fails the test
        state = data_server.get(f"/api/jobs/{job['id']}").json()
        if (state.get("progress") or {}).get("value", 0) >= 1:
            break
        assert state["status"] == "running", state.get("error")
        assert time.monotonic() < deadline, "no training step within 120 s"
        time.sleep(0.05)
    assert data_server.post(f"/api/jobs/{job['id']}/cancel").status_code in (200, 202)
    assert wait_job(data_server, job["id"], timeout=120)["status"] == "cancelled"


def test_data_filter_job_counts_add_up(data_server):
    recipe = {"dataset_path": "input.jsonl", "export_path": "out/result.jsonl", "np": 1, "image_key": "image",
              "process": [{"image_shape_filter": {"min_width": 80}}]}
    job = data_server.post("/api/jobs/data-filter", json={"recipe": recipe}).json()
    done = wait_job(data_server, job["id"], timeout=60)
    assert done["status"] == "done", done["error"]
    # the images are 64, 80, 96 and 112 px wide: min_width 80 keeps the last three, rejects the first
    result = done["result"]
    assert (result["kept"], result["rejected"], result["errored"]) == (3, 1, 0), result
    assert result["rejected_by"] == {"image_shape_filter": 1}
    kept = [json.loads(line) for line in (data_server.data_dir / result["outputs"]["kept"]).read_text().splitlines()]
    assert [row["text"] for row in kept] == ["a green square", "a blue square", "a yellow square"]
