"""Jobs survive the server: kill -9 a `loraflow serve` process while a job runs; a new server on the
same SQLite database runs the queued jobs, marks the running one interrupted, and can re-queue it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx

from serve_helpers import TINY, wait_job


def start(models_dir, outputs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "loraflow", "serve", "--port", "0", "--models-dir", str(models_dir),
                             "--outputs-dir", str(outputs), "--device", "cpu"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    url = re.search(r"http://[\d.]+:\d+", line).group(0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the socket is bound before the app finishes starting
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"server did not start: {line}")


def test_kill_and_restart_keeps_the_queue(models_dir, tmp_path):
    outputs = tmp_path / "outputs"
    proc, url = start(models_dir, outputs)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            slow = client.post("/api/jobs/generate", json={**TINY, "num_inference_steps": 300}).json()
            queued = [client.post("/api/jobs/generate", json={**TINY, "seed": s}).json()["id"] for s in (7, 8)]
            wait_job(client, slow["id"], until=("running",))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    proc, url = start(models_dir, outputs)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            interrupted = client.get(f"/api/jobs/{slow['id']}").json()
            assert interrupted["status"] == "interrupted" and "re-queue" in interrupted["error"]
            assert [wait_job(client, j)["status"] for j in queued] == ["done", "done"]
            requeued = client.post(f"/api/jobs/{slow['id']}/requeue")
            assert requeued.status_code == 202 and requeued.json()["status"] == "queued"
            job = wait_job(client, slow["id"], timeout=120)
            assert job["status"] == "done" and job["attempts"] == 2
            assert client.post(f"/api/jobs/{slow['id']}/requeue").status_code == 409  # done jobs stay done
    finally:
        proc.terminate()
        proc.wait(30)


def test_graceful_stop_interrupts_the_running_job(start_server, tmp_path):
    url, thread = start_server()
    with httpx.Client(base_url=url, timeout=30) as client:
        slow = client.post("/api/jobs/generate", json={**TINY, "num_inference_steps": 400}).json()
        waiting = client.post("/api/jobs/generate", json=TINY).json()
        wait_job(client, slow["id"], until=("running",))
    thread.stop()
    url, _ = start_server(db=str(tmp_path / "outputs" / "jobs.sqlite"))
    with httpx.Client(base_url=url, timeout=30) as client:
        assert client.get(f"/api/jobs/{slow['id']}").json()["status"] == "interrupted"
        assert wait_job(client, waiting["id"])["status"] == "done"
