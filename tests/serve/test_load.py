"""A small load test: 50 submissions from concurrent clients on loopback; each is accepted (202) or
cleanly refused (429), every accepted job finishes, none is lost. Timings are printed, not asserted
(bench/serve_load.py measures them)."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from serve_helpers import TINY, wait_job


def test_fifty_concurrent_submissions(start_server):
    url, thread = start_server(queue_size=16)
    started = time.monotonic()

    def submit(i: int):
        with httpx.Client(base_url=url, timeout=30) as client:
            r = client.post("/api/jobs/generate", json={**TINY, "num_inference_steps": 1, "seed": i})
            return r.status_code, r.json()

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(submit, range(50)))
    submit_seconds = time.monotonic() - started
    codes = [code for code, _ in answers]
    assert set(codes) <= {202, 429}
    assert all("full" in body["error"] for code, body in answers if code == 429)
    accepted = [body["id"] for code, body in answers if code == 202]
    assert len(accepted) >= 16 and len(set(accepted)) == len(accepted)
    with httpx.Client(base_url=url, timeout=30) as client:
        finished = [wait_job(client, job_id, timeout=120) for job_id in accepted]
        assert {job["status"] for job in finished} == {"done"}
        stored = client.get("/api/jobs", params={"limit": 1000}).json()["jobs"]
    assert sorted(j["id"] for j in stored) == sorted(accepted)  # nothing lost, nothing invented
    total = time.monotonic() - started
    print(f"\nload: 50 submissions from 10 clients in {submit_seconds:.2f}s: {len(accepted)} accepted, "
          f"{codes.count(429)} refused (429); all accepted done after {total:.1f}s "
          f"({len(accepted) / total:.1f} jobs/s)")
