"""The one background-work helper of the GUI: a QRunnable on a QThreadPool.

In the spirit of Anki's ``QueryOp``::

    BackgroundOp(parent, op=lambda ctx: slow(ctx), success=show) \\
        .failure(show_error).with_progress(update_bar).on_cancel(reset) \\
        .run_in_background()

``op`` runs on a pool thread and receives a :class:`TaskContext`; it reports progress with
``ctx.progress(done, total, text)`` and polls ``ctx.check_cancelled()`` (raises
:class:`~mendicant_desktop.core.errors.CancelledError`). ``success``/``failure``/progress/cancel callbacks
always run on the GUI thread, and are skipped if ``parent`` has been destroyed meanwhile.
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import shiboken6
from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal, Slot

from mendicant_desktop.core.errors import CancelledError

T = TypeVar("T")

__all__ = ["BackgroundOp", "TaskContext", "Worker", "WorkerSignals", "scoring_pool", "store_pool"]

_pools: dict[str, QThreadPool] = {}


def _serial_pool(name: str) -> QThreadPool:
    """The process's one-thread pool called ``name`` (made on first use): its jobs run strictly in queue order."""
    pool = _pools.get(name)
    if pool is None:
        pool = _pools[name] = QThreadPool()
        pool.setMaxThreadCount(1)
        pool.setObjectName(name)
    return pool


def scoring_pool() -> QThreadPool:
    """A one-thread pool: cases are scored strictly in the order they were queued."""
    return _serial_pool("mendicant-scoring")


def store_pool() -> QThreadPool:
    """A one-thread pool for the case store: saves, deletes and undo run strictly in the order asked."""
    return _serial_pool("mendicant-store")


class TaskContext:
    """Handed to the operation on the worker thread: progress reporting and cooperative cancel."""

    def __init__(self, signals: WorkerSignals) -> None:
        self._signals = signals
        self._cancel = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        self._cancel.set()

    def check_cancelled(self) -> None:
        if self._cancel.is_set():
            raise CancelledError("cancelled by the user")

    def progress(self, done: int, total: int = 0, text: str = "") -> None:
        """Report progress (thread-safe; delivered to the GUI thread as a queued signal)."""
        self._signals.progress.emit(int(done), int(total), str(text))


class WorkerSignals(QObject):
    """Signals of one :class:`Worker`; emitted from the pool thread, received on the GUI thread."""

    progress = Signal(int, int, str)
    result = Signal(object)
    error = Signal(object)  # the exception; its formatted traceback is in ``exc.__traceback_text__``
    cancelled = Signal()
    finished = Signal()


class Worker(QRunnable):
    """Runs ``fn(ctx)`` on a pool thread and reports through :class:`WorkerSignals`."""

    def __init__(self, fn: Callable[[TaskContext], Any]) -> None:
        super().__init__()
        self.setAutoDelete(False)  # the owning BackgroundOp keeps it alive until ``finished``
        self.fn = fn
        self.signals = WorkerSignals()
        self.ctx = TaskContext(self.signals)

    def cancel(self) -> None:
        self.ctx.cancel()

    def run(self) -> None:  # pool thread
        try:
            if self.ctx.cancelled:
                self.signals.cancelled.emit()
                return
            result = self.fn(self.ctx)
            if self.ctx.cancelled:
                self.signals.cancelled.emit()
            else:
                self.signals.result.emit(result)
        except CancelledError:
            self.signals.cancelled.emit()
        except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing crashes the app
            with contextlib.suppress(Exception):  # exotic exception types without __dict__
                exc.__traceback_text__ = traceback.format_exc()  # type: ignore[attr-defined]
            self.signals.error.emit(exc)
        finally:
            self.signals.finished.emit()


class _Relay(QObject):
    """Lives on the GUI thread, so the worker's signals arrive as queued calls there."""

    def __init__(self, op: BackgroundOp) -> None:
        super().__init__()
        self._op = op

    def _alive(self) -> bool:
        p = self._op._parent
        return p is None or shiboken6.isValid(p)

    @Slot(int, int, str)
    def on_progress(self, done: int, total: int, text: str) -> None:
        if self._op._progress and self._alive():
            self._op._progress(done, total, text)

    @Slot(object)
    def on_result(self, value: object) -> None:
        if self._alive():
            self._op._success(value)

    @Slot(object)
    def on_error(self, exc: object) -> None:
        if not self._alive():
            return
        if self._op._failure is not None:
            self._op._failure(exc)
        else:  # no handler: never crash the GUI, log it
            import sys

            print(getattr(exc, "__traceback_text__", repr(exc)), file=sys.stderr)

    @Slot()
    def on_cancelled(self) -> None:
        if self._op._cancelled and self._alive():
            self._op._cancelled()

    @Slot()
    def on_finished(self) -> None:
        op = self._op
        BackgroundOp._running.discard(op)  # held until here so a fire-and-forget op is not collected early
        # The pool thread may still be returning from Worker.run() when this queued call arrives:
        # keep the runnable alive a while longer instead of freeing it under the pool's feet.
        BackgroundOp._graveyard.append(op.worker)


class BackgroundOp(Generic[T]):
    """Builder for one background operation (see the module docstring)."""

    _running: set[BackgroundOp] = set()
    _graveyard: deque[Worker | None] = deque(maxlen=256)

    def __init__(
        self,
        parent: QObject | None,
        *,
        op: Callable[[TaskContext], T],
        success: Callable[[T], None],
    ) -> None:
        self._parent = parent
        self._op = op
        self._success = success
        self._failure: Callable[[BaseException], None] | None = None
        self._progress: Callable[[int, int, str], None] | None = None
        self._cancelled: Callable[[], None] | None = None
        self.worker: Worker | None = None
        self._pool: QThreadPool | None = None

    def failure(self, fn: Callable[[BaseException], None]) -> BackgroundOp[T]:
        self._failure = fn
        return self

    def with_progress(self, fn: Callable[[int, int, str], None]) -> BackgroundOp[T]:
        self._progress = fn
        return self

    def on_cancel(self, fn: Callable[[], None]) -> BackgroundOp[T]:
        self._cancelled = fn
        return self

    def run_in_background(self, pool: QThreadPool | None = None) -> BackgroundOp[T]:
        """Queue the operation; returns ``self`` (keep it to :meth:`cancel`)."""
        from PySide6.QtCore import QCoreApplication, Qt

        from .gc_guard import install_gui_thread_collector

        app = QCoreApplication.instance()
        if app is not None:  # before any Python runs on a pool thread: cycles are collected here, never there
            install_gui_thread_collector(app)
        worker = Worker(self._op)
        relay = _Relay(self)
        q = Qt.ConnectionType.QueuedConnection
        worker.signals.progress.connect(relay.on_progress, q)
        worker.signals.result.connect(relay.on_result, q)
        worker.signals.error.connect(relay.on_error, q)
        worker.signals.cancelled.connect(relay.on_cancelled, q)
        worker.signals.finished.connect(relay.on_finished, q)
        self.worker = worker
        self._relay = relay
        self._pool = pool or QThreadPool.globalInstance()
        BackgroundOp._running.add(self)
        self._pool.start(worker)
        return self

    def cancel(self) -> None:
        """Ask the operation to stop; a still-queued one is dropped from its pool at once."""
        if self.worker is None:
            return
        self.worker.cancel()
        if self._pool is not None and self._pool.tryTake(self.worker):
            # Never started: deliver ``cancelled`` + ``finished`` ourselves (queued, like a real run).
            self.worker.signals.cancelled.emit()
            self.worker.signals.finished.emit()

    @property
    def is_cancelled(self) -> bool:
        return self.worker is not None and self.worker.ctx.cancelled

    def __hash__(self) -> int:
        return id(self)
