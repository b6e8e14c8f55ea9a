"""The one background helper: result, error, progress and cancel always arrive on the GUI thread."""

from __future__ import annotations

import threading
import time


def test_success_progress_and_thread(qtbot):
    from PySide6.QtCore import QObject

    from mendicant_desktop.gui.worker import BackgroundOp

    owner = QObject()
    main = threading.get_ident()
    seen: dict = {"progress": [], "threads": set()}

    def op(ctx):
        seen["worker_thread"] = threading.get_ident()
        for i in range(3):
            ctx.progress(i + 1, 3, f"step {i + 1}")
        return 42

    def ok(v):
        seen["result"] = v
        seen["threads"].add(threading.get_ident())

    def prog(d, t, txt):
        seen["progress"].append((d, t, txt))
        seen["threads"].add(threading.get_ident())

    BackgroundOp(owner, op=op, success=ok).with_progress(prog).run_in_background()
    qtbot.waitUntil(lambda: "result" in seen, timeout=5000)
    assert seen["result"] == 42
    assert seen["worker_thread"] != main
    assert seen["threads"] == {main}
    qtbot.waitUntil(lambda: len(seen["progress"]) == 3, timeout=2000)
    assert seen["progress"][-1] == (3, 3, "step 3")


def test_failure_is_reported_not_raised(qtbot):
    from PySide6.QtCore import QObject

    from mendicant_desktop.gui.worker import BackgroundOp

    owner = QObject()
    errors = []

    def op(ctx):
        raise ValueError("boom")

    BackgroundOp(owner, op=op, success=lambda v: None).failure(errors.append).run_in_background()
    qtbot.waitUntil(lambda: bool(errors), timeout=5000)
    assert isinstance(errors[0], ValueError)
    assert "boom" in errors[0].__traceback_text__


def test_cancel_running_and_queued(qtbot):
    from PySide6.QtCore import QObject, QThreadPool

    from mendicant_desktop.gui.worker import BackgroundOp

    owner = QObject()
    pool = QThreadPool()
    pool.setMaxThreadCount(1)
    started = threading.Event()
    events: list[str] = []

    def slow(ctx):
        started.set()
        for _ in range(200):
            ctx.check_cancelled()
            time.sleep(0.01)
        return "finished"

    a = BackgroundOp(owner, op=slow, success=lambda v: events.append("a-ok")).on_cancel(
        lambda: events.append("a-cancel")).run_in_background(pool)
    b = BackgroundOp(owner, op=slow, success=lambda v: events.append("b-ok")).on_cancel(
        lambda: events.append("b-cancel")).run_in_background(pool)
    assert started.wait(5)
    b.cancel()  # still queued: taken out of the pool
    a.cancel()  # running: stops at its next check
    qtbot.waitUntil(lambda: {"a-cancel", "b-cancel"} <= set(events), timeout=5000)
    assert "a-ok" not in events and "b-ok" not in events
    assert pool.waitForDone(5000)


def test_callbacks_skipped_when_parent_destroyed(qtbot):
    from PySide6.QtCore import QObject

    from mendicant_desktop.gui.worker import BackgroundOp

    owner = QObject()
    got = []
    gate = threading.Event()

    def op(ctx):
        gate.wait(5)
        return 1

    op_ = BackgroundOp(owner, op=op, success=got.append).run_in_background()
    owner.deleteLater()
    qtbot.wait(50)
    gate.set()
    qtbot.waitUntil(lambda: op_ not in BackgroundOp._running, timeout=5000)
    assert got == []

