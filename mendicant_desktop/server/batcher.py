"""Dynamic batching: concurrent requests that arrive within a short window run as one ONNX Runtime batch.

:class:`DynamicBatcher` stands in front of a :class:`~mendicant_desktop.core.inference.Engine` and
offers the same ``predict_preprocessed`` (and every other attribute, delegated), so the application
layer's scoring path runs unchanged on top of it. A call from a request thread queues its images and
blocks; one batching thread takes the first queued call, waits up to ``window_s`` for more (or until
``max_batch`` images are waiting), runs them through the engine in one call per distinct set of
options, and hands each caller its own predictions. With ``window_s == 0`` or ``max_batch == 1`` it
is a plain pass-through.

Why it helps on a CPU: one forward pass of N images costs less than N passes of one (ONNX Runtime
parallelises within a batch and pays its per-call overhead once), and the request threads stop
competing for the same cores. ``benchmarks/api_benchmark.py`` measures batching on against off.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
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
    ) -> None:
        if window_s < 0 or max_batch < 1:
            raise ValueError("window_s must be >= 0 and max_batch >= 1")
        self.engine = engine
        self.window_s = float(window_s)
        self.max_batch = int(max_batch)
        self.on_batch = on_batch
        self.enabled = self.window_s > 0 and self.max_batch > 1
        self._queue: queue.Queue[_Call | None] = queue.Queue()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None
        if self.enabled:
            self._thread = threading.Thread(target=self._loop, name="dynamic-batcher", daemon=True)
            self._thread.start()

    def __getattr__(self, name: str) -> Any:  # card, input_size, class_names, bundle, run, ...
        return getattr(self.engine, name)

    @property
    def depth(self) -> int:
        """Calls waiting for the batching thread (an approximation; for /health and /metrics)."""
        return self._queue.qsize()

    def predict_preprocessed(self, x: np.ndarray, metadata: Sequence[Any] | None = None, **options: Any) -> list:
        x = np.asarray(x, dtype=np.float32)
        metas = list(metadata) if metadata is not None else [None] * x.shape[0]
        if not self.enabled or x.shape[0] >= self.max_batch:
            self._record(x.shape[0])
            return self.engine.predict_preprocessed(x, metas, **options)
        if self._closed.is_set():
            raise RuntimeError("the batcher is closed")
        call = _Call(x, metas, tuple(sorted(options.items())))
        self._queue.put(call)
        return call.future.result()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
        while True:  # anything left behind is failed, never left hanging
            try:
                call = self._queue.get_nowait()
            except queue.Empty:
                break
            if call is not None and not call.future.done():
                call.future.set_exception(RuntimeError("the server is shutting down"))

    def _record(self, n: int) -> None:
        if self.on_batch is not None and n:
            self.on_batch(n)

    def _collect(self, first: _Call) -> list[_Call]:
        calls = [first]
        images = first.size
        deadline = time.monotonic() + self.window_s
        while images < self.max_batch:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                nxt = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if nxt is None:  # close(): run what we have, then stop
                self._queue.put(None)
                break
            calls.append(nxt)
            images += nxt.size
        return calls

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            calls = self._collect(first)
            groups: dict[tuple, list[_Call]] = {}
            for c in calls:
                groups.setdefault(c.options, []).append(c)
            for options, group in groups.items():
                self._run_group(dict(options), group)

    def _run_group(self, options: dict[str, Any], group: list[_Call]) -> None:
        # Never more than max_batch images in one engine call (a late call may overshoot the count).
        chunk: list[_Call] = []
        count = 0
        for c in group:
            if chunk and count + c.size > self.max_batch:
                self._run_chunk(options, chunk)
                chunk, count = [], 0
            chunk.append(c)
            count += c.size
        if chunk:
            self._run_chunk(options, chunk)

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
