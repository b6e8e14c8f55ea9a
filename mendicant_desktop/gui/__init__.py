"""The desktop GUI (PySide6): a thin layer over :mod:`mendicant_desktop.core`.

Entry point: :func:`mendicant_desktop.gui.app.main`. Every long operation goes through
:class:`mendicant_desktop.gui.worker.BackgroundOp`, so the UI thread never blocks on the model.
"""

from ._compat import protect_singletons as _protect_singletons

_protect_singletons()  # PySide6 6.12.0 on Python 3.11 steals references to None/True/False: see _compat
