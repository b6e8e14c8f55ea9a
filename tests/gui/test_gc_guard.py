"""Cycles are collected on the GUI thread only, never on a worker (mendicant_desktop.gui.gc_guard).

CI hung 31 min with a worker inside ``load_bundle`` and the GUI thread inside ``QLabel.setBuddy``: a cyclic
collection on the worker finalising the previous window's Qt wrappers there. These tests pin the mechanism.
"""

from __future__ import annotations

import gc
import threading

import pytest


@pytest.mark.parametrize(("counts", "threshold", "expected"), [
    ((0, 0, 0), (700, 10, 10), None),
    ((700, 50, 50), (700, 10, 10), None),  # gen 0 not over its threshold: nothing, whatever the older counts
    ((701, 0, 0), (700, 10, 10), 0),
    ((701, 11, 10), (700, 10, 10), 1),
    ((701, 11, 11), (700, 10, 10), 2),
    ((701, 3, 99), (700, 10, 10), 2),  # the oldest generation over its threshold, whatever the middle one says
    ((701, 11, 0), (700, 10, 10), 1),
])
def test_due_generation_follows_cpython(counts, threshold, expected):
    from mendicant_desktop.gui.gc_guard import due_generation

    assert due_generation(counts, threshold) == expected


class _Node:
    """One half of a reference cycle that records the thread its finaliser ran on."""

    def __init__(self, log: list[int]) -> None:
        self.log = log
        self.other: _Node | None = None

    def __del__(self) -> None:
        self.log.append(threading.get_ident())


def test_background_work_never_collects_gui_cycles(qtbot, qapp):
    """Garbage cycles left by the GUI thread survive a worker's heavy allocation and die on the GUI thread."""
    from PySide6.QtCore import QObject

    from mendicant_desktop.gui.gc_guard import GuiThreadCollector
    from mendicant_desktop.gui.worker import BackgroundOp

    main = threading.get_ident()
    gc.collect()
    log: list[int] = []
    for _ in range(50):
        a, b = _Node(log), _Node(log)
        a.other, b.other = b, a
    del a, b
    done: dict = {}

    def op(ctx):
        done["worker"] = threading.get_ident()
        # ~200 gen-0 thresholds' worth of container allocations: with automatic collection on, CPython
        # would collect (and run the _Node finalisers) here, on the worker thread.
        junk = [[i] for i in range(150_000)]
        return len(junk)

    BackgroundOp(QObject(), op=op, success=lambda n: done.setdefault("n", n)).run_in_background()
    qtbot.waitUntil(lambda: "n" in done, timeout=30_000)
    assert done["n"] == 150_000 and done["worker"] != main
    assert not gc.isenabled(), "starting background work must switch automatic collection off"
    # The collector's timer may have run meanwhile (waitUntil spins the event loop), but only on this thread.
    assert set(log) <= {main}, "a cycle was collected on the worker thread"
    collector = qapp.findChild(GuiThreadCollector)
    assert collector is not None
    gc.collect()  # what the collector's timer does, on this (the GUI) thread
    assert len(log) == 100 and set(log) == {main}


def test_one_collector_per_app_and_it_refuses_other_threads(qapp):
    from mendicant_desktop.gui.gc_guard import GuiThreadCollector, install_gui_thread_collector

    first = install_gui_thread_collector(qapp)
    assert install_gui_thread_collector(qapp) is first
    assert len(qapp.findChildren(GuiThreadCollector)) == 1
    assert first.threshold == gc.get_threshold()
    errors: list[BaseException] = []

    def off_thread() -> None:
        try:
            first.check()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=off_thread)
    t.start()
    t.join()
    assert len(errors) == 1 and "GUI thread" in str(errors[0])
    assert first.check() in (None, 0, 1, 2)  # on the GUI thread it runs
    assert _install_off_thread(qapp) is None  # only the GUI thread installs


def _install_off_thread(app):
    from mendicant_desktop.gui.gc_guard import install_gui_thread_collector

    out: list = []
    t = threading.Thread(target=lambda: out.append(install_gui_thread_collector(app)))
    t.start()
    t.join()
    return out[0]


def test_stop_at_quit_keeps_collection_off_and_a_later_install_restarts(qapp):
    """At quit a worker may still run Python: stopping must not hand collection back to CPython."""
    from mendicant_desktop.gui.gc_guard import install_gui_thread_collector

    collector = install_gui_thread_collector(qapp)
    collector.stop()
    assert not collector.active and not gc.isenabled()
    assert install_gui_thread_collector(qapp) is collector and collector.active and not gc.isenabled()
