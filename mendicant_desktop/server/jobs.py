"""Long explanations (occlusion sensitivity, seconds per image) as jobs: submit, poll, cancel.

One worker thread runs jobs in order, so occlusion never takes more than its share of the CPU from
``/predict``. The store is bounded (``max_jobs``): a full store refuses new jobs (the API answers 503
with ``Retry-After``) rather than queueing without limit. Finished jobs are forgotten ``ttl_s`` after
they end, so results do not pile up in memory.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mendicant_desktop.core.errors import CancelledError

#: A job body: ``fn(progress, cancel)`` returning a JSON-able result. ``progress(done, total)``.
JobFn = Callable[[Callable[[int, int], None], threading.Event], dict[str, Any]]

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL = frozenset({DONE, FAILED, CANCELLED})


class JobStoreFull(Exception):
    """Too many jobs are queued, running or recently finished."""


@dataclass
class Job:
    id: str
    kind: str
    fn: JobFn = field(repr=False)
    state: str = QUEUED
    done: int = 0
    total: int = 0
    result: dict[str, Any] | None = field(default=None, repr=False)
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "state": self.state,
            "progress": {"done": self.done, "total": self.total},
            "error": self.error, "result": self.result if self.state == DONE else None,
            "created": self.created, "finished": self.finished,
        }


class JobQueue:
    """A bounded job store with one worker thread. Thread-safe."""

    def __init__(self, max_jobs: int = 16, ttl_s: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self.max_jobs = int(max_jobs)
        self.ttl_s = float(ttl_s)
        self._clock = clock
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="explain-jobs", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.state in (QUEUED, RUNNING))

    def submit(self, kind: str, fn: JobFn) -> Job:
        with self._lock:
            self._expire()
            if len(self._jobs) >= self.max_jobs:
                raise JobStoreFull(f"{len(self._jobs)} jobs are queued, running or awaiting collection")
            job = Job(id=uuid.uuid4().hex, kind=kind, fn=fn, created=self._clock())
            self._jobs[job.id] = job
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            self._expire()
            return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> Job | None:
        """Ask a job to stop: a queued job is cancelled at once, a running one at its next batch."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            job.cancel.set()
            if job.state == QUEUED:
                job.state, job.finished = CANCELLED, self._clock()
            return job

    def close(self) -> None:
        with self._lock:
            for job in self._jobs.values():
                job.cancel.set()
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _expire(self) -> None:
        now = self._clock()
        old = [k for k, j in self._jobs.items() if j.finished is not None and now - j.finished > self.ttl_s]
        for k in old:
            del self._jobs[k]

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.state != QUEUED:
                    continue
                job.state = RUNNING

            def progress(done: int, total: int, job: Job = job) -> None:
                job.done, job.total = int(done), int(total)

            try:
                result = job.fn(progress, job.cancel)
            except CancelledError:
                state, result, error = CANCELLED, None, None
            except Exception as exc:  # a failed job is reported, the worker lives on
                state, result, error = FAILED, None, f"{type(exc).__name__}: {exc}"
            else:
                state, error = DONE, None
            with self._lock:
                job.state, job.result, job.error, job.finished = state, result, error, self._clock()
