"""Python's cyclic garbage collector, run on the GUI thread only.

Why: CPython collects cycles in whichever thread happens to allocate when a generation's threshold is
crossed. With a worker busy in Python (loading the model, scoring a folder), that is usually the worker.
A collection there finalises whatever Qt wrappers the GUI thread left in cycles (a closed window's widgets,
a lambda slot holding ``self``), so their C++ destructors run on the wrong thread. Qt forbids that, and in
practice it deadlocks: the worker holds the GIL inside the destructor, waiting for a Qt lock that the GUI
thread holds while it waits for the GIL. CI hung 31 minutes exactly so (the worker inside ``np.load`` under
``load_bundle``, the GUI thread inside ``QLabel.setBuddy`` building the next window).

The cure is the well-known one (pydev blog 2014, pyqtgraph's ``GarbageCollector``, Spyder's
``QGarbageCollector``): switch automatic collection off and collect from a GUI-thread timer with the same
per-generation thresholds. Reference counting still frees everything that is not in a cycle at once, on any
thread; only cycles wait for the next tick (one second at most while the event loop runs).
"""

from __future__ import annotations

import gc

from PySide6.QtCore import QCoreApplication, QObject, QThread, QTimer

__all__ = ["GuiThreadCollector", "collect_due", "due_generation", "install_gui_thread_collector"]

#: How often the GUI thread checks the collector's counts (ms). Cheap when nothing crossed a threshold.
INTERVAL_MS = 1000


def due_generation(counts: tuple[int, int, int], threshold: tuple[int, int, int]) -> int | None:
    """The generation CPython's automatic collection would collect now (None: none is due).

    CPython's rule (``gc_collect_generations``): nothing happens until generation 0's count exceeds its threshold;
    then the oldest generation whose count exceeds its own threshold is collected. (CPython also defers a full
    collection while few objects await one, a figure Python code cannot read; this never defers.)
    """
    if counts[0] <= threshold[0]:
        return None
    return max(g for g in range(len(counts)) if counts[g] > threshold[g])


def collect_due(threshold: tuple[int, int, int]) -> int | None:
    """Collect the due generation (see :func:`due_generation`) on the calling thread; returns it."""
    gen = due_generation(gc.get_count(), threshold)
    if gen is not None:
        gc.collect(gen)
    return gen


class GuiThreadCollector(QObject):
    """Disables automatic collection while it lives; :meth:`check` collects on the GUI thread instead."""

    def __init__(self, parent: QObject | None = None, interval_ms: int = INTERVAL_MS) -> None:
        super().__init__(parent)
        #: the thresholds automatic collection would have used (gc.get_threshold() before we disabled it)
        self.threshold: tuple[int, int, int] = gc.get_threshold()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self.check)
        self.start()

    def check(self) -> int | None:
        """Collect the oldest generation whose count crossed its threshold, as CPython would; returns it.

        Called by the timer; may be called directly (tests, before a big allocation). Never off the GUI
        thread: that is the whole point, so it refuses instead.
        """
        if QThread.currentThread() != self.thread():
            raise RuntimeError("GuiThreadCollector.check() must run on the GUI thread")
        return collect_due(self.threshold)

    def start(self) -> None:
        """(Re)start: automatic collection off, the timer on."""
        gc.disable()
        self._timer.start()

    @property
    def active(self) -> bool:
        return self._timer.isActive()

    def stop(self) -> None:
        """Stop the timer at quit after one last collection here. Automatic collection stays off: a model load
        or a scoring job may still be running on a pool thread, and a collection there is what this prevents."""
        self._timer.stop()
        gc.collect()


def install_gui_thread_collector(app: QCoreApplication) -> GuiThreadCollector | None:
    """The application's one collector, made on first call (idempotent; restarted if it was stopped); it lives as
    the app's child. Only the GUI thread installs it: called on another thread, it does nothing (returns None)."""
    if QThread.currentThread() != app.thread():
        return None
    existing = app.findChild(GuiThreadCollector)
    if existing is not None:
        if not existing.active:
            existing.start()
        return existing
    collector = GuiThreadCollector(app)
    app.aboutToQuit.connect(collector.stop)
    return collector
