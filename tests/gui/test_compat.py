"""PySide6 6.12.0 on Python 3.11 steals references to None/True: the GUI must survive a long session."""

from __future__ import annotations

import sys


def test_singletons_survive_many_void_calls(qtbot):
    from PySide6.QtCore import QObject, Signal
    from PySide6.QtWidgets import QLabel

    from mendicant_desktop.gui import _compat

    if _compat.pyside_steals_references():
        assert _compat.is_protected()
        assert sys.getrefcount(None) > 2**39 and sys.getrefcount(True) > 2**39
    label = QLabel()
    qtbot.addWidget(label)

    class Emitter(QObject):
        ping = Signal()

    e = Emitter()
    # far more than None's (~5,000) or True's (~600) natural reference count on Python 3.11
    for _ in range(20_000):
        label.setText("x")
        e.ping.emit()
    assert label.text() == "x"


def test_no_guard_needed_or_applied_on_a_correct_build(monkeypatch):
    from mendicant_desktop.gui import _compat

    monkeypatch.setattr(_compat, "_protected", False)
    monkeypatch.setattr(_compat, "pyside_steals_references", lambda: False)
    assert _compat.protect_singletons() is False
