"""A wedged job never blocks the queue for good.

Cancel is cooperative (the job stops at its next progress step). The watchdog adds two bounds:

1. a time budget: a job running longer than `time_limit` seconds is cancelled (it ends `failed`,
   "ran past the server's time limit");
2. a grace period: a job still running `grace` seconds after its cancel (a client's or the time
   limit's) is given up on: it is recorded `failed` and the queue goes on on a fresh worker thread.
   Python cannot kill a thread; the old one ends by itself when the stuck call returns, and its
   outcome is discarded.
"""
from __future__ import annotations

import threading
import time


class Watchdog:
    def __init__(self, worker, time_limit: float, grace: float, interval: float = 0.25):
        self.worker, self.time_limit, self.grace, self.interval = worker, time_limit, grace, interval
        self._stop = threading.Event()
        self._cancel_seen: dict[str, float] = {}  # job id -> when the watchdog first saw its cancel
        self._thread = threading.Thread(target=self._loop, name="loraflow-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        ctx = self.worker._current
        if ctx is None:
            return
        if self.time_limit and now - ctx.started > self.time_limit and not ctx.cancel.is_set():
            ctx.timed_out = True
            ctx.cancel.set()
        if not ctx.cancel.is_set():
            return
        seen = self._cancel_seen.setdefault(ctx.job.id, now)
        if now - seen > self.grace:
            self._cancel_seen.pop(ctx.job.id, None)
            why = "ran past the server's time limit (--job-time-limit)" if ctx.timed_out else "was cancelled"
            if self.worker.abandon(ctx, f"job {ctx.job.id} {why} and did not stop within {self.grace:g} s "
                                        "(--cancel-grace); the queue went on without it"):
                if ctx.job.kind == "workflow":  # ComfyUI clients wait for this closing message
                    ctx.emit("executing", node=None, display_node=None, prompt_id=ctx.job.id)
