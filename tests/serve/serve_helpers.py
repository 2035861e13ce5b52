"""Helpers shared by the serve tests (a module of its own: `conftest` is not importable by name)."""
from __future__ import annotations

import time

def wait_job(client, job_id: str, timeout: float = 60, until=("done", "failed", "cancelled", "interrupted")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


TINY = {"model": "tiny-sdxl", "prompt": "an orange cat", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 1}
