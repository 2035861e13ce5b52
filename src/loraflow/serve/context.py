"""What a running job may use (`JobContext`) and what the worker keeps between jobs (`WorkerState`).

Below the worker, the job kinds and the ComfyUI executor, so all of them can name these types
without importing each other."""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loraflow.serve import store as st
from loraflow.serve.comfy.values import CachedNode
from loraflow.serve.events import EventBus
from loraflow.serve.model_cache import ModelCache
from loraflow.serve.paths import ServerPaths

PROGRESS_WRITE_INTERVAL = 0.5  # seconds between progress rows written to SQLite


class JobCancelled(Exception):
    pass


@dataclass
class WorkerState:
    """Kept by the worker across jobs. Objects built from a loaded model are not kept here: the model
    cache owns them (`GenerationSession.derived`), so evicting a model frees them."""

    comfy_cache: dict[str, CachedNode] = field(default_factory=dict)  # ComfyUI node id -> its last outputs


@dataclass
class JobContext:
    """What a running job may use: folders, the model cache, progress/preview/event reporting."""

    job: st.Job
    paths: ServerPaths
    models: ModelCache
    bus: EventBus
    store: st.JobStore
    state: WorkerState
    cancel: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    timed_out: bool = False  # cancelled by the watchdog's time limit, not by a client
    abandoned: bool = False  # the watchdog gave up on it (serve/watchdog.py): its outcome is not recorded
    _last_write: float = 0.0

    @property
    def out_dir(self) -> Path:
        return self.paths.outputs / "jobs" / self.job.id

    @property
    def subfolder(self) -> str:
        return f"jobs/{self.job.id}"

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise JobCancelled(f"job {self.job.id} was cancelled")

    def emit(self, type_: str, **data: Any) -> None:
        self.bus.publish({"type": type_, "job": self.job.id, "client_id": self.job.client_id, "data": data})

    def progress(self, value: int, maximum: int, node: str | None = None) -> None:
        self.check_cancel()
        now = time.monotonic()
        if now - self._last_write > PROGRESS_WRITE_INTERVAL or value >= maximum:
            self.store.set_progress(self.job.id, value, maximum)
            self._last_write = now
        self.emit("progress", value=value, max=maximum, node=node)

    def preview(self, jpeg: bytes) -> None:
        self.bus.publish({"type": "preview", "job": self.job.id, "client_id": self.job.client_id, "jpeg": jpeg})
