"""Helpers shared by the serve tests (a module of its own: `conftest` is not importable by name)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from loraflow.serve.context import WorkerState
from loraflow.serve.paths import ServerPaths

def wait_job(client, job_id: str, timeout: float = 60, until=("done", "failed", "cancelled", "interrupted")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in until:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout}s")


TINY = {"model": "tiny-sdxl", "prompt": "an orange cat", "num_inference_steps": 2, "width": 64, "height": 64, "seed": 1}


# ---- running workflows in-process: the executor with a small stand-in for the worker's job context ----
class _Paths(ServerPaths):
    def model(self, name: str) -> str:  # the in-process models have no file
        return name


@dataclass
class _Models:
    sessions: dict

    def session(self, model: str, **_):
        return self.sessions[model]


@dataclass
class InProcessCtx:
    """What the executor and nodes use of the worker's `JobContext`."""

    job: SimpleNamespace
    paths: ServerPaths
    models: _Models
    state: WorkerState = field(default_factory=WorkerState)
    previews: list = field(default_factory=list)

    def check_cancel(self) -> None:
        pass

    def emit(self, type_: str, **data) -> None:
        pass

    def progress(self, value: int, maximum: int, node: str | None = None) -> None:
        pass

    def preview(self, jpeg: bytes) -> None:
        self.previews.append(jpeg)


def in_process_ctx(sessions: dict, tmp_path: Path, prompt: dict | None = None, outputs=("9",)) -> InProcessCtx:
    """A job context whose models are `sessions` (name -> GenerationSession), with folders under tmp_path."""
    paths = _Paths(tmp_path / "models", tmp_path / "outputs", tmp_path / "data")
    paths.make()
    job = SimpleNamespace(id="p1", payload={"prompt": prompt or {}, "outputs": list(outputs)})
    return InProcessCtx(job, paths, _Models(sessions))
