"""Dynamic batching: concurrent requests that arrive within a short window run as one ONNX Runtime batch.

:class:`DynamicBatcher` stands in front of a :class:`~mendicant_desktop.core.inference.Engine` and
offers the same ``predict_preprocessed`` (and every other attribute, delegated), so the application
layer's scoring path runs unchanged on top of it. A call from a request thread queues its images and
blocks; one batching thread takes the queued calls, waits up to ``window_s`` for more (or until
``max_batch`` images are waiting), runs them through the engine in one call per distinct set of
options, and hands each caller its own predictions. With ``window_s == 0`` or ``max_batch == 1`` it
is a plain pass-through.

With ``track_arrivals`` the batcher waits only for requests it knows are on their way: a request
announces itself with :meth:`arriving` when it starts (before decoding), and the window is cut short as
soon as no announced request is still being decoded. A lone request then never waits; under load the
window fills as before. Without it, every batch waits the whole window for company.

Why it helps on a CPU: one forward pass of N images costs less than N passes of one (ONNX Runtime
parallelises within a batch and pays its per-call overhead once), and the request threads stop
competing for the same cores. ``benchmarks/api_benchmark.py`` measures batching on against off.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class _Call:
    x: np.ndarray
    metadata: list[Any]
    options: tuple[tuple[str, Any], ...]
    future: cf.Future = field(default_factory=cf.Future)

    @property
    def size(self) -> int:
        return int(self.x.shape[0])


class DynamicBatcher:
    """Engine proxy that merges concurrent ``predict_preprocessed`` calls. Thread-safe; call :meth:`close`."""

    def __init__(
        self,
        engine: Any,
        *,
        window_s: float = 0.010,
        max_batch: int = 8,
        on_batch: Callable[[int], None] | None = None,
        track_arrivals: bool = False,
    ) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self.engine = engine
        self.window_s = float(window_s)
        self.max_batch = int(max_batch)
        self.on_batch = on_batch
        self.track_arrivals = bool(track_arrivals)
        self.enabled = self.window_s > 0 and self.max_batch > 1
        self._calls: deque[_Call] = deque()
        self._arriving = 0  # announced requests that have not queued their call yet
        self._cv = threading.Condition()
        self._closed = False
        self._tls = threading.local()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="dynamic-batcher", daemon=True)
            self._thread.start()

    def __getattr__(self, name: str) -> Any:  # card, input_size, class_names, bundle, run, ...
        return getattr(self.engine, name)

    @property
    def depth(self) -> int:
        """Calls waiting for the batching thread (for /health and /metrics)."""
        return len(self._calls)

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce, for this thread, a request whose ``predict_preprocessed`` call will follow (or not)."""
        if not (self.enabled and self.track_arrivals):
            yield
            return
        with self._cv:
            self._arriving += 1
        self._tls.announced = True
        try:
            yield
        finally:
            if getattr(self._tls, "announced", False):  # it never reached the model (a bad image): not coming
                self._tls.announced = False
                with self._cv:
                    self._arriving -= 1
                    self._cv.notify_all()

    def predict_preprocessed(self, x: np.ndarray, metadata: Sequence[Any] | None = None, **options: Any) -> list:
        x = np.asarray(x, dtype=np.float32)
        metas = list(metadata) if metadata is not None else [None] * x.shape[0]
        announced = getattr(self._tls, "announced", False)
        self._tls.announced = False
        if not self.enabled or x.shape[0] >= self.max_batch:
            if announced:
                with self._cv:
                    self._arriving -= 1
                    self._cv.notify_all()
            self._record(x.shape[0])
            return self.engine.predict_preprocessed(x, metas, **options)
        call = _Call(x, metas, tuple(sorted(options.items())))
        with self._cv:
            if announced:
                self._arriving -= 1
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._calls.append(call)
            self._cv.notify_all()
        return call.future.result()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._cv:  # anything left behind is failed, never left hanging
            while self._calls:
                call = self._calls.popleft()
                if not call.future.done():
                    call.future.set_exception(RuntimeError("the server is shutting down"))

    def _record(self, n: int) -> None:
        if self.on_batch is not None and n:
            self.on_batch(n)

    def _collect(self) -> list[_Call] | None:
        """The next calls to run (None once closed): wait for a first one, then up to the window for more."""
        with self._cv:
            while not self._calls and not self._closed:
                self._cv.wait()
            if not self._calls:
                return None
            deadline = time.monotonic() + self.window_s
            while not self._closed:
                images = sum(c.size for c in self._calls)
                if images >= self.max_batch or (self.track_arrivals and self._arriving <= 0):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            calls: list[_Call] = []
            images = 0
            while self._calls and (not calls or images + self._calls[0].size <= self.max_batch):
                c = self._calls.popleft()
                calls.append(c)
                images += c.size
            return calls

    def _loop(self) -> None:
        while True:
            calls = self._collect()
            if calls is None:
                return
            groups: dict[tuple, list[_Call]] = {}
            for c in calls:
                groups.setdefault(c.options, []).append(c)
            for options, group in groups.items():
                self._run_chunk(dict(options), group)

    def _run_chunk(self, options: dict[str, Any], chunk: list[_Call]) -> None:
        x = np.concatenate([c.x for c in chunk], axis=0)
        metas = [m for c in chunk for m in c.metadata]
        try:
            self._record(x.shape[0])
            preds = self.engine.predict_preprocessed(x, metas, **options)
        except BaseException as exc:  # each caller gets the error; the batching thread survives
            log.debug("batched inference failed", exc_info=True)
            for c in chunk:
                if not c.future.done():
                    c.future.set_exception(exc)
            return
        at = 0
        for c in chunk:
            c.future.set_result(list(preds[at : at + c.size]))
            at += c.size
