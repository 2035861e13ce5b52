"""The one worker thread: it owns the accelerator, takes jobs from the store in FIFO order and runs
them one at a time. Cancel is cooperative: the next progress step raises `JobCancelled`."""
from __future__ import annotations

import logging
import threading
import traceback

from loraflow.errors import LoraflowError
from loraflow.serve import store as st
from loraflow.serve.context import JobCancelled, JobContext, WorkerState
from loraflow.serve.events import EventBus
from loraflow.serve.jobs import JOB_KINDS
from loraflow.serve.model_cache import ModelCache
from loraflow.serve.paths import ServerPaths

__all__ = ["JobCancelled", "JobContext", "Worker"]
log = logging.getLogger("loraflow.serve")


class Worker:
    def __init__(self, store: st.JobStore, paths: ServerPaths, models: ModelCache, bus: EventBus):
        self.store, self.paths, self.models, self.bus = store, paths, models, bus
        self.state = WorkerState()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._current: JobContext | None = None
        self._thread = threading.Thread(target=self._loop, name="loraflow-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def abandon(self, ctx: JobContext, error: str) -> bool:
        """Give up on a job that ignored its cancel (`serve.watchdog`): record it failed and run the
        queue on a fresh thread. The old thread ends on its own when the job returns; what it does
        then is discarded. Returns False when the job ended meanwhile."""
        if self._current is not ctx:
            return False
        ctx.abandoned = True
        self._current = None
        self.store.finish(ctx.job.id, st.FAILED, {}, error)
        self.bus.publish({"type": "status", "job": ctx.job.id, "client_id": ctx.job.client_id,
                          "data": {"status": st.FAILED, "error": error, "result": {}}})
        self._thread = threading.Thread(target=self._loop, name="loraflow-worker", daemon=True)
        self._thread.start()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; a running job is cancelled and recorded as interrupted (re-queueable)."""
        self._stop.set()
        current = self._current
        if current:
            current.cancel.set()
        self._wake.set()
        self._thread.join(timeout)

    def notify(self) -> None:
        self._wake.set()

    @property
    def current(self) -> st.Job | None:
        ctx = self._current
        return ctx.job if ctx else None

    def cancel(self, job_id: str) -> str | None:
        """Cancel a queued or running job; returns the status it will end in, None if it already ended."""
        if self.store.cancel_queued(job_id):
            self.bus.publish({"type": "status", "job": job_id, "data": {"status": st.CANCELLED}})
            return st.CANCELLED
        ctx = self._current
        if ctx and ctx.job.id == job_id:
            ctx.cancel.set()
            return st.CANCELLED
        return None

    def interrupt(self) -> None:
        ctx = self._current
        if ctx:
            ctx.cancel.set()

    def _loop(self) -> None:
        while not self._stop.is_set() and threading.current_thread() is self._thread:
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._run(job)

    def _run(self, job: st.Job) -> None:
        ctx = JobContext(job, self.paths, self.models, self.bus, self.store, self.state)
        self._current = ctx
        self.bus.publish({"type": "status", "job": job.id, "client_id": job.client_id, "data": {"status": st.RUNNING}})
        status, result, error = st.DONE, {}, None
        try:
            kind = JOB_KINDS[job.kind]
            result = kind.run(ctx, kind.parse(job.payload))
        except JobCancelled as e:
            status, error = (st.INTERRUPTED if self._stop.is_set() else st.CANCELLED), str(e)
            if ctx.timed_out:
                status, error = st.FAILED, f"job {job.id} ran past the server's time limit (--job-time-limit)"
            result = getattr(e, "result", {}) or {}
        except LoraflowError as e:
            status, error = st.FAILED, str(e)
            result = getattr(e, "result", {}) or {}
        except Exception as e:  # a bug: keep the traceback in the log, the job records the one-line cause
            log.error("job %s failed:\n%s", job.id, traceback.format_exc())
            status, error = st.FAILED, f"{type(e).__name__}: {e}"
            result = getattr(e, "result", {}) or {}
        finally:
            if self._current is ctx:
                self._current = None
        if ctx.abandoned:
            return
        if status == st.INTERRUPTED:
            error = "the server stopped while this job was running; re-queue it to run it again"
        elif error:  # library messages name files by their absolute paths on this machine
            error = self.paths.public_text(error)
        self.store.finish(job.id, status, result, error)
        self.bus.publish({"type": "status", "job": job.id, "client_id": job.client_id,
                          "data": {"status": status, "error": error, "result": result}})
