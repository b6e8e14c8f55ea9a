"""Guard against a reference-counting bug of PySide6 6.12.0 on CPython < 3.12.

PySide6/shiboken6 6.12.0 return ``None`` from every void method (``QWidget.setToolTip``,
``QPainter.drawLine``, ...) and ``True`` from ``SignalInstance.emit`` without taking a new reference.
That is harmless on CPython >= 3.12, where ``None``/``True``/``False`` are immortal, but on 3.11 each
call steals one reference: a normal session (painting a case list, scrolling, re-scoring) reaches
zero within minutes and the interpreter aborts with "Fatal Python error: none_dealloc" (or
"bool_dealloc"). PySide6 6.11.x does not have the bug.

The real fix is the dependency pin (``PySide6-Essentials<6.12`` on Python 3.11) or Python >= 3.12.
Until every installation has it, :func:`protect_singletons` probes for the leak once and, only when
it is present, gives the three singletons 2**40 extra references -- what immortality means on 3.12 --
so the stolen references can never bring them to zero (at a million calls a second that would take
twelve days). It touches nothing else and does nothing on a correct PySide6 or on Python >= 3.12.
"""

from __future__ import annotations

import ctypes
import sys

_EXTRA = 1 << 40
_protected = False


def pyside_steals_references() -> bool:
    """Whether void PySide6 calls lose a reference to ``None`` (measured, not guessed from versions)."""
    from PySide6.QtCore import QObject

    obj = QObject()
    n = 64
    before = sys.getrefcount(None)
    for _ in range(n):
        obj.setObjectName("probe")
    lost = before - sys.getrefcount(None)
    return lost >= n // 2


def protect_singletons() -> bool:
    """Apply the guard if (and only if) this PySide6 build leaks; returns whether it was applied."""
    global _protected
    if _protected:
        return True
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return False
    if not pyside_steals_references():
        return False
    for obj in (None, True, False):
        refcnt = ctypes.c_ssize_t.from_address(id(obj))  # ob_refcnt is PyObject's first field
        refcnt.value += _EXTRA
    _protected = True
    return True


def is_protected() -> bool:
    return _protected
