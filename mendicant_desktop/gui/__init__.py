"""The desktop GUI (PySide6): a thin layer over :mod:`mendicant_desktop.core`.

Entry point: :func:`mendicant_desktop.gui.app.main`. Every long operation goes through
:class:`mendicant_desktop.gui.worker.BackgroundOp`, so the UI thread never blocks on the model.
"""
