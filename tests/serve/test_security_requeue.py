"""A re-queued train job resumes from the checkpoints it saved in its own folder, not from step 0."""
from __future__ import annotations

import csv
import json
import time

import httpx
from PIL import Image

from serve_helpers import wait_job


def _first_progress(client, job_id: str) -> int:
    with client.stream("GET", f"/api/jobs/{job_id}/events") as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "progress":
                return json.loads(line[6:])["value"]
    raise AssertionError("no progress event")


def test_requeued_train_job_resumes_from_its_checkpoints(start_server, tmp_path):
    train = tmp_path / "data" / "shapes" / "train"
    train.mkdir(parents=True)
    with open(train / "metadata.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["file_name", "text"])
        for i, colour in enumerate(["red", "green"]):
            Image.new("RGB", (64, 64), colour).save(train / f"{i}.png")
            rows.writerow([f"{i}.png", f"a {colour} square"])
    url, thread = start_server(data_dir=str(tmp_path / "data"))
    body = {"model": "tiny-sdxl", "dataset": "shapes", "resolution": 64, "lora_rank": 4, "max_steps": 100000,
            "save_every": 1, "keep_checkpoints": 1}
    with httpx.Client(base_url=url, timeout=60) as client:
        job = client.post("/api/jobs/train", json=body).json()
        deadline = time.monotonic() + 120
        while (client.get(f"/api/jobs/{job['id']}").json().get("progress") or {}).get("value", 0) < 3:
            assert time.monotonic() < deadline, "training made no progress"
            time.sleep(0.05)
        client.post(f"/api/jobs/{job['id']}/cancel")
        assert wait_job(client, job["id"], timeout=120)["status"] == "cancelled"
        saved = sorted((thread.state.paths.outputs / "jobs" / job["id"] / "checkpoints").glob("step-*"))
        last = int(saved[-1].name.split("-")[1])
        assert last >= 2
        assert client.post(f"/api/jobs/{job['id']}/requeue").status_code == 202
        assert _first_progress(client, job["id"]) == last + 1  # not 1: it went on from its own checkpoint
        client.post(f"/api/jobs/{job['id']}/cancel")
        wait_job(client, job["id"], timeout=120)
