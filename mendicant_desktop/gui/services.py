"""The core services the widgets are given (dependency injection): settings and the model engine.

``Services`` owns no widgets. It loads and verifies the model in the background
(:class:`~mendicant_desktop.gui.worker.BackgroundOp`) and re-creates the engine when the thread count
changes. Widgets read ``services.engine`` and listen to ``engineChanged``/``modelFailed``.
"""

from __future__ import annotations

import os
import time

from PySide6.QtCore import QObject, Signal

from mendicant_desktop.app.model import load_bundle, make_engine
from mendicant_desktop.core.bundle import ModelBundle
from mendicant_desktop.core.inference import Engine

from .settings import THREADS_KEY, AppSettings
from .worker import BackgroundOp


class Services(QObject):
    engineChanged = Signal(object)  # Engine
    modelFailed = Signal(str)
    modelLoading = Signal()

    def __init__(self, settings: AppSettings, card: str | os.PathLike | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.card_path = card  # resolved by app.model (--model > MENDICANT_MODEL > bundled) when loading
        self.bundle: ModelBundle | None = None
        self.engine: Engine | None = None
        self.error: str | None = None
        self.loading = False
        self.load_seconds: float | None = None
        self._op: BackgroundOp | None = None
        settings.changed.connect(self._on_setting)

    @property
    def threshold(self) -> float | None:
        """The operating threshold in use: the user's, else the model card's (None before a model)."""
        if self.engine is None:
            return self.settings.threshold
        return self.settings.effective_threshold(self.engine.card.threshold)

    def load_model(self) -> None:
        """Verify and load the model in the background; emits ``engineChanged`` or ``modelFailed``."""
        if self.loading:
            return
        self.loading = True
        self.error = None
        self.modelLoading.emit()
        card, threads = self.card_path, self.settings.threads
        t0 = time.perf_counter()

        def op(ctx):
            ctx.progress(0, 2, "verifying the model")
            bundle = load_bundle(card)
            ctx.progress(1, 2, "starting the inference engine")
            return bundle, make_engine(bundle, threads)

        def done(res) -> None:
            self.loading = False
            self.bundle, self.engine = res
            self.load_seconds = time.perf_counter() - t0
            self.engineChanged.emit(self.engine)

        def failed(exc: BaseException) -> None:
            self.loading = False
            self.error = str(exc) or type(exc).__name__
            self.modelFailed.emit(self.error)

        self._op = BackgroundOp(self, op=op, success=done).failure(failed).run_in_background()

    def _on_setting(self, key: str) -> None:
        if key != THREADS_KEY or self.bundle is None or self.engine is None:
            return
        if self.engine.threads == self.settings.threads:
            return
        bundle, threads = self.bundle, self.settings.threads

        def op(ctx):
            return make_engine(bundle, threads)

        def done(engine) -> None:
            self.engine = engine
            self.engineChanged.emit(engine)

        BackgroundOp(self, op=op, success=done).failure(
            lambda e: self.modelFailed.emit(f"could not restart the engine: {e}")).run_in_background()
