"""Jobs in SQLite (stdlib `sqlite3`): the queue, its order, each job's status, progress and result.

A job is committed (WAL, synchronous=FULL) before the HTTP answer that accepts it, so an accepted
job is never lost. On start, a job found `running` was cut off by a crash or a kill: it becomes
`interrupted` and may be re-queued. Status moves only forward:

    queued -> running -> done | failed | cancelled | interrupted      (interrupted/failed/cancelled -> queued on requeue)
    queued -> cancelled
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, DONE, FAILED, CANCELLED, INTERRUPTED = "queued", "running", "done", "failed", "cancelled", "interrupted"
FINISHED = (DONE, FAILED, CANCELLED, INTERRUPTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    number     INTEGER PRIMARY KEY AUTOINCREMENT,  -- queue order (FIFO); a requeue takes a new number
    id         TEXT UNIQUE NOT NULL,
    kind       TEXT NOT NULL,
    payload    TEXT NOT NULL,                      -- the validated request, JSON
    status     TEXT NOT NULL,
    client_id  TEXT,
    created    REAL NOT NULL,
    started    REAL,
    finished   REAL,
    progress   TEXT,                               -- {"value", "max"} JSON
    result     TEXT,                               -- JSON: images, outputs, ...
    error      TEXT,
    attempts   INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, number);
"""


class QueueFull(Exception):
    pass


@dataclass
class Job:
    id: str
    number: int
    kind: str
    payload: dict
    status: str
    created: float
    client_id: str | None = None
    started: float | None = None
    finished: float | None = None
    progress: dict | None = None
    result: dict = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "number": self.number, "kind": self.kind, "status": self.status,
            "created": self.created, "started": self.started, "finished": self.finished,
            "progress": self.progress, "result": self.result, "error": self.error,
            "attempts": self.attempts, "payload": self.payload,
        }


class JobStore:
    def __init__(self, path: str | Path, queue_size: int):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.interrupted_at_start = self._mark_interrupted()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _mark_interrupted(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT id FROM jobs WHERE status=?", (RUNNING,)).fetchall()
            self._db.execute(
                "UPDATE jobs SET status=?, finished=?, error=? WHERE status=?",
                (INTERRUPTED, time.time(), "the server stopped while this job was running; re-queue it to run it again", RUNNING),
            )
        return [r["id"] for r in rows]

    # ---- writes ------------------------------------------------------------------------------
    def add(self, kind: str, payload: dict, client_id: str | None = None, job_id: str | None = None) -> Job:
        """Append a job to the queue; QueueFull when `queue_size` jobs are already waiting."""
        job_id = job_id or uuid.uuid4().hex
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._check_room()
                self._db.execute(
                    "INSERT INTO jobs (id, kind, payload, status, client_id, created) VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, kind, json.dumps(payload), QUEUED, client_id, time.time()),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def _check_room(self) -> None:
        """QueueFull (HTTP 429) when `queue_size` jobs are waiting; called inside the insert's transaction."""
        (waiting,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (QUEUED,)).fetchone()
        if waiting >= self.queue_size:
            raise QueueFull(f"the queue is full ({waiting} jobs waiting); try again later")

    def claim_next(self) -> Job | None:
        """The oldest queued job, now marked running (only the worker calls this)."""
        with self._lock:
            row = self._db.execute("SELECT id FROM jobs WHERE status=? ORDER BY number LIMIT 1", (QUEUED,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE jobs SET status=?, started=?, attempts=attempts+1, progress=NULL WHERE id=?",
                             (RUNNING, time.time(), row["id"]))
        return self.get(row["id"])

    def set_progress(self, job_id: str, value: int, maximum: int) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET progress=? WHERE id=?", (json.dumps({"value": value, "max": maximum}), job_id))

    def finish(self, job_id: str, status: str, result: dict | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute("UPDATE jobs SET status=?, finished=?, result=?, error=? WHERE id=?",
                             (status, time.time(), json.dumps(result or {}), error, job_id))

    def cancel_queued(self, job_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("UPDATE jobs SET status=?, finished=?, error=? WHERE id=? AND status=?",
                                   (CANCELLED, time.time(), "cancelled before it started", job_id, QUEUED))
        return cur.rowcount == 1

    def requeue(self, job_id: str) -> Job:
        """Put a finished-but-unsuccessful job at the back of the queue (same id, new number)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
                if row is None:
                    raise KeyError(job_id)
                if row["status"] not in (FAILED, CANCELLED, INTERRUPTED):
                    raise ValueError(f"job {job_id} is {row['status']}; only failed, cancelled or interrupted jobs can be re-queued")
                self._check_room()
                self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
                self._db.execute(
                    "INSERT INTO jobs (id, kind, payload, status, client_id, created, attempts) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (job_id, row["kind"], row["payload"], QUEUED, row["client_id"], row["created"], row["attempts"]),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return self.get(job_id)

    def delete(self, job_id: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM jobs WHERE id=? AND status IN (?, ?, ?, ?)", (job_id, *FINISHED))
        return cur.rowcount == 1

    # ---- reads -------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, status: tuple[str, ...] | None = None, kind: str | None = None, limit: int = 100,
             newest_first: bool = True) -> list[Job]:
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if status:
            sql += f" AND status IN ({','.join('?' * len(status))})"
            args += list(status)
        if kind:
            sql += " AND kind=?"
            args.append(kind)
        sql += f" ORDER BY number {'DESC' if newest_first else 'ASC'} LIMIT ?"
        args.append(int(limit))
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_job(r) for r in rows]

    def count(self, status: str) -> int:
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=?", (status,)).fetchone()
        return n


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"], number=row["number"], kind=row["kind"], payload=json.loads(row["payload"]),
        status=row["status"], created=row["created"], client_id=row["client_id"], started=row["started"],
        finished=row["finished"], progress=json.loads(row["progress"]) if row["progress"] else None,
        result=json.loads(row["result"]) if row["result"] else {}, error=row["error"], attempts=row["attempts"],
    )
