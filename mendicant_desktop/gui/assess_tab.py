"""The "Assess" tab: the case list, the case view and the scoring queue (the controller of cases)."""

from __future__ import annotations

import os
from collections import OrderedDict
from datetime import datetime
from pathlib import Path

import numpy as np
from PySide6.QtCore import QItemSelectionModel, Qt, QThreadPool, Signal
from PySide6.QtGui import QImage
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListView,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop.app.assessment import (
    PREVIEW_BASE_SIDE,
    Failure,
    estimate_skin,
    rescore,
    try_assess,
    with_threshold,
)
from mendicant_desktop.app.errors import failure_reason
from mendicant_desktop.app.images import downscale
from mendicant_desktop.app.inputs import iter_inputs
from mendicant_desktop.core.explain import OcclusionSensitivity
from mendicant_desktop.core.metadata import SEXES, SITES, Metadata
from mendicant_desktop.core.preprocess import load_image

from .case_view import CaseView
from .cases import Case, CaseDelegate, CaseListModel, CaseRole
from .qtutil import qimage_png_bytes, rgb_to_qimage
from .services import Services
from .settings import ESTIMATE_FST_KEY, OVERLAY_PREFIX, THRESHOLD_KEY
from .widgets import DropZone
from .worker import BackgroundOp, scoring_pool

#: Decoded display copies kept in memory; older ones are re-read from disk when selected again.
DISPLAY_CACHE = 12
#: Longest side of the copy kept for display (zoom goes this far; the model never sees it): the app layer's
#: largest preview, which it makes anyway for the quality checks.
DISPLAY_SIDE = PREVIEW_BASE_SIDE
#: Longest side of a case list thumbnail.
THUMB_SIDE = 72

#: ``OcclusionSensitivity`` settings of "Detailed explanation" (the engine's defaults: 226 passes per image).
OCCLUSION = {"patch": 32, "stride": 16, "batch_size": 16}


class AssessTab(QWidget):
    queueChanged = Signal(int, int, int)  # done, errors, total
    message = Signal(str)  # short, non-modal notices for the status bar
    currentCaseChanged = Signal(object)

    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        self.settings = services.settings
        self.model = CaseListModel(self)
        self._ops: dict[int, BackgroundOp] = {}
        self._occl_ops: dict[int, BackgroundOp] = {}  # "Detailed explanation" runs, by case id
        self.occlusion_params = dict(OCCLUSION)
        self._occl_pool = QThreadPool(self)  # one at a time, apart from the scoring queue
        self._occl_pool.setMaxThreadCount(1)
        self._cache: OrderedDict[int, Case] = OrderedDict()
        self._paste_n = 0

        self.stack = QStackedWidget()
        self.drop_zone = DropZone()
        self.stack.addWidget(self.drop_zone)

        content = QSplitter(Qt.Orientation.Horizontal)
        content.setChildrenCollapsible(False)
        content.addWidget(self._build_case_list())
        self.view = CaseView(self.settings)
        content.addWidget(self.view)
        content.setStretchFactor(0, 0)
        content.setStretchFactor(1, 1)
        content.setSizes([290, 990])
        self.stack.addWidget(content)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.banner = QLabel("")
        self.banner.setObjectName("ErrorBanner")
        self.banner.setWordWrap(True)
        self.banner.setVisible(False)
        lay.addWidget(self.banner)
        lay.addWidget(self.stack, 1)

        self._wire()
        self._update_stack()

    def _build_case_list(self) -> QWidget:
        """The left panel: the title with the count, the case list and the remove/clear buttons."""
        left = QWidget()
        left.setObjectName("CaseListPanel")
        ll = QVBoxLayout(left)
        ll.setContentsMargins(8, 8, 0, 8)
        ll.setSpacing(6)
        self.list_title = QLabel("Cases")
        self.list_title.setObjectName("CardTitle")
        ll.addWidget(self.list_title)
        self.list = QListView()
        self.list.setModel(self.model)
        self.list.setItemDelegate(CaseDelegate(self.list))
        self.list.setUniformItemSizes(True)
        self.list.setSelectionMode(QListView.SelectionMode.SingleSelection)
        self.list.setAcceptDrops(False)
        self.list.setMinimumWidth(210)
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setAccessibleName("Case list")
        ll.addWidget(self.list, 1)
        btns = QHBoxLayout()
        self.btn_remove = QPushButton("Remove")
        self.btn_remove.setToolTip("Remove the selected case from this session (Delete)")
        self.btn_clear = QPushButton("Clear all")
        self.btn_clear.setToolTip("Remove every case from this session")
        btns.addWidget(self.btn_remove)
        btns.addWidget(self.btn_clear)
        btns.addStretch(1)
        ll.addLayout(btns)
        return left

    def _wire(self) -> None:
        """Selection, the case view's edits, the buttons, the model's arrival and the settings."""
        self.list.selectionModel().currentChanged.connect(self._current_changed)
        self.view.metadataEdited.connect(self.set_metadata)
        self.view.fstOverrideEdited.connect(self.set_fst_override)
        self.view.explainRequested.connect(self.explain_case)
        self.view.explainCancelRequested.connect(self.cancel_explain)
        self.btn_remove.clicked.connect(self.remove_current)
        self.btn_clear.clicked.connect(self.clear)
        self.services.engineChanged.connect(self._engine_ready)
        self.services.modelFailed.connect(self._model_failed)
        self.settings.changed.connect(self._setting_changed)

    # ---- adding cases -------------------------------------------------------------------------
    def add_paths(self, paths: list[str | os.PathLike]) -> list[Case]:
        """Queue files and folders, found as ``--batch`` finds them (:func:`app.inputs.iter_inputs`).

        Entries that cannot be images (a missing file, an unlistable folder) become error cases at once.
        Returns the new cases.
        """
        cases = []
        for item in iter_inputs(list(paths)):
            case = Case(source=item.path, path=Path(item.path))
            if item.error:
                case.status, case.error = "error", item.error
            cases.append(case)
        if not cases and paths:
            self.message.emit("No images found in what was dropped.")
        self._add(cases)
        return cases

    def add_image(self, image: QImage | bytes, label: str | None = None) -> Case:
        """Queue an in-memory image (clipboard paste or image data dropped from a browser)."""
        self._paste_n += 1
        data = image if isinstance(image, bytes) else qimage_png_bytes(image)
        case = Case(source=label or f"Pasted image {self._paste_n} ({datetime.now():%H:%M:%S})", path=None)
        case.pending_bytes = data
        self._add([case])
        return case

    def _add(self, cases: list[Case]) -> None:
        if not cases:
            return
        first_new = self.model.rowCount()
        self.model.add(cases)
        self._update_stack()
        if not self.list.currentIndex().isValid():
            self.select_row(first_new)
        for c in cases:
            self._schedule(c)
        self._emit_queue()

    # ---- scoring ------------------------------------------------------------------------------
    def _schedule(self, case: Case) -> None:
        engine = self.services.engine
        if engine is None or case.id in self._ops or case.status != "queued":
            return
        meta = case.metadata
        threshold = self.services.threshold
        estimate = self.settings.estimate_fst
        source = case.pending_bytes if case.pending_bytes is not None else case.path

        def op(ctx):
            ctx.check_cancelled()
            ctx.progress(0, 1, "scoring")
            a = try_assess(engine, source, meta, name=case.source, threshold=threshold, estimate_fst=estimate,
                           preview_side=DISPLAY_SIDE)
            if isinstance(a, Failure):
                return a, None, None
            # QImage is reentrant: build the display image here, in the format QPixmap uses as is
            qimg = rgb_to_qimage(a.preview).convertToFormat(QImage.Format.Format_RGB32)
            return a, np.ascontiguousarray(downscale(a.preview, THUMB_SIDE)), qimg

        def started(done: int, total: int, txt: str) -> None:
            if case.status == "queued":
                case.status = "scoring"
                self._changed(case)

        def ok(res) -> None:
            a, thumb, qimg = res
            self._ops.pop(case.id, None)
            if isinstance(a, Failure):  # the input cannot be decoded: an error case, as --batch gives a row
                case.set_failure(a)
                self._changed(case, image_changed=True)
                return
            case.set_assessment(a)
            case.display_qimage = qimg
            case.set_thumb(thumb)
            case.pending_bytes = None
            case.scored = datetime.now()
            case.status = "done"
            case.clear_occlusion()
            self._touch(case)
            if case.metadata != meta:  # edited while it was being scored
                self.set_metadata(case, case.metadata, force=True)
            self._changed(case, image_changed=True)

        def failed(exc: BaseException) -> None:  # not a bad input: memory, or a bug
            self._ops.pop(case.id, None)
            case.set_failure(Failure(case.source, failure_reason(exc)))
            self._changed(case, image_changed=True)

        def cancelled() -> None:
            self._ops.pop(case.id, None)

        self._ops[case.id] = (
            BackgroundOp(self, op=op, success=ok).failure(failed).with_progress(started).on_cancel(cancelled)
            .run_in_background(scoring_pool())
        )

    def _engine_ready(self, engine) -> None:
        self.banner.setVisible(False)
        sexes = engine.card.raw.get("preprocessing", {}).get("metadata", {}).get("sex") or SEXES
        sites = engine.card.raw.get("preprocessing", {}).get("metadata", {}).get("site") or SITES
        self.view.set_categories([s for s in sexes if s in SEXES] or SEXES, [s for s in sites if s in SITES] or SITES)
        self._rethreshold()
        for c in self.model.cases:
            self._schedule(c)

    def _model_failed(self, reason: str) -> None:
        self.banner.setText(f"<b>The model could not be loaded:</b> {reason}<br>Images stay queued; see the "
                            "Model tab. Reinstall the application if the model file was modified.")
        self.banner.setVisible(True)

    def set_metadata(self, case: Case, meta: Metadata, force: bool = False) -> None:
        """Store new metadata and re-score the case at once (off the GUI thread)."""
        if meta == case.metadata and not force:
            return
        case.metadata = meta
        self.cancel_explain(case)
        case.clear_occlusion()  # it explained the score under the old metadata
        engine = self.services.engine
        if engine is None or case.assessment is None or case.status == "error":
            return  # scored with the new metadata when its turn comes
        scored, threshold = case.assessment, self.services.threshold
        case.status = "scoring"
        self._changed(case)

        def ok(a) -> None:
            if case.metadata != meta:
                return  # a newer edit is on its way
            case.set_rescored(a)
            case.status = "done"
            case.scored = datetime.now()
            self._changed(case)

        def failed(exc: BaseException) -> None:
            case.status = "done" if case.prediction is not None else "error"
            self.message.emit(f"Re-scoring {case.name} failed: {exc}")
            self._changed(case)

        BackgroundOp(self, op=lambda ctx: rescore(engine, scored, meta, threshold=threshold), success=ok).failure(
            failed).run_in_background()

    # ---- detailed explanation (occlusion sensitivity) ------------------------------------------
    def explain_current(self) -> None:
        case = self.current_case()
        if case is not None:
            self.explain_case(case)

    def explain_case(self, case: Case) -> BackgroundOp | None:
        """Occlusion sensitivity of the malignancy score, in the background; the size-of-change map is
        stored on the case and shown as the "Occlusion" heat map."""
        engine = self.services.engine
        if (engine is None or case.x is None or case.status != "done" or case.id in self._occl_ops):
            return None
        x, meta = case.x, case.metadata
        occ = OcclusionSensitivity(engine, **self.occlusion_params)

        def op(ctx):
            res = occ.explain(x, meta, target="malignancy", progress=lambda d, t: ctx.progress(d, t),
                              cancel=lambda: ctx.cancelled)
            return res.normalized("magnitude"), res

        def progress(done: int, total: int, _txt: str) -> None:
            if case.occlusion_progress is not None:
                case.occlusion_progress = (done, total)
                self.view.show_explain_state(case)

        def ok(value) -> None:
            heat, res = value
            self._end_explain(case)
            if case.metadata != meta or case.x is not x or case.status == "error":
                self._changed(case)
                return  # stale: the case changed meanwhile
            case.occlusion = heat
            case.occlusion_info = f"{res.n_passes} passes, {res.patch} px patch, {res.seconds:.1f} s"
            if case is self.current_case():
                self.view.set_mode("Occlusion")
            self._changed(case)
            self.message.emit(f"{case.name}: detailed explanation ready ({res.seconds:.1f} s)")

        def failed(exc: BaseException) -> None:
            self._end_explain(case)
            self.message.emit(f"Detailed explanation of {case.name} failed: {exc}")
            self._changed(case)

        def cancelled() -> None:
            self._end_explain(case)
            self.message.emit(f"Detailed explanation of {case.name} cancelled")
            self._changed(case)

        case.occlusion_progress = (0, occ.n_passes())
        bop = (BackgroundOp(self, op=op, success=ok).failure(failed).with_progress(progress)
               .on_cancel(cancelled).run_in_background(self._occl_pool))
        self._occl_ops[case.id] = bop
        self._changed(case)
        return bop

    def _end_explain(self, case: Case) -> None:
        self._occl_ops.pop(case.id, None)
        case.occlusion_progress = None

    def cancel_explain(self, case: Case) -> None:
        op = self._occl_ops.get(case.id)
        if op is not None:
            op.cancel()

    def explaining(self, case: Case) -> bool:
        return case.id in self._occl_ops

    def set_fst_override(self, case: Case, value: str | None) -> None:
        case.fst_override = value or None
        self._changed(case)

    # ---- settings -----------------------------------------------------------------------------
    def _setting_changed(self, key: str) -> None:
        if key == THRESHOLD_KEY:
            self._rethreshold()
        elif key.startswith(OVERLAY_PREFIX):
            self.view.apply_settings()
        elif key == ESTIMATE_FST_KEY:
            if self.settings.estimate_fst:
                self._estimate_missing_skin()
            self.view.apply_settings()

    def _rethreshold(self) -> None:
        t = self.services.threshold
        if t is None:
            return
        for c in self.model.cases:
            if c.prediction is not None and c.prediction.threshold != t:
                c.prediction = with_threshold(c.prediction, t)
        self.model.refresh_all()
        self._show_current(image_changed=False)
        self._emit_queue()

    def _estimate_missing_skin(self) -> None:
        todo = [c for c in self.model.cases if c.skin is None and c.display is not None]
        if not todo:
            return
        imgs = [(c, c.display) for c in todo]

        def ok(results) -> None:
            for c, est in results:
                c.skin = est
            self._show_current(image_changed=False)

        BackgroundOp(self, op=lambda ctx: [(c, estimate_skin(d)) for c, d in imgs], success=ok).run_in_background()

    # ---- display cache ------------------------------------------------------------------------
    def _touch(self, case: Case) -> None:
        self._cache.pop(case.id, None)
        self._cache[case.id] = case
        while len(self._cache) > DISPLAY_CACHE:
            _, old = self._cache.popitem(last=False)
            if old.path is not None and old is not self.current_case():
                old.display = old.display_qimage = None  # re-read from disk if selected again

    def _reload_display(self, case: Case) -> None:
        path = case.path

        def ok(display) -> None:
            case.display = display
            self._touch(case)
            if case is self.current_case():
                self.view.show_case(case, image_changed=True)

        def failed(exc: BaseException) -> None:
            self.message.emit(f"{case.name}: the file can no longer be read ({getattr(exc, 'reason', exc)})")

        BackgroundOp(self, op=lambda ctx: downscale(load_image(path), DISPLAY_SIDE), success=ok).failure(
            failed).run_in_background()

    # ---- selection & navigation ---------------------------------------------------------------
    def current_case(self) -> Case | None:
        ix = self.list.currentIndex()
        return ix.data(CaseRole) if ix.isValid() else None

    def select_row(self, row: int) -> None:
        if 0 <= row < self.model.rowCount():
            ix = self.model.index(row)
            self.list.selectionModel().setCurrentIndex(ix, QItemSelectionModel.SelectionFlag.ClearAndSelect)
            self.list.scrollTo(ix)

    def select_case(self, case: Case) -> None:
        self.select_row(self.model.row_of(case))

    def next_case(self) -> None:
        self.select_row(min(self.model.rowCount() - 1, self.list.currentIndex().row() + 1))

    def previous_case(self) -> None:
        self.select_row(max(0, self.list.currentIndex().row() - 1))

    def _current_changed(self, cur, prev) -> None:
        case = cur.data(CaseRole) if cur.isValid() else None
        if case is not None and case.display is None and case.path is not None and case.status == "done":
            self._reload_display(case)
        elif case is not None and case.display is not None:
            self._touch(case)
        self.view.show_case(case)
        self.currentCaseChanged.emit(case)

    def _show_current(self, image_changed: bool) -> None:
        case = self.current_case()
        if case is not None:
            self.view.show_case(case, image_changed=image_changed)

    def _changed(self, case: Case, image_changed: bool = False) -> None:
        self.model.refresh(case)
        if case is self.current_case():
            self.view.show_case(case, image_changed=image_changed)
            self.currentCaseChanged.emit(case)
        self._emit_queue()

    def _emit_queue(self) -> None:
        cases = self.model.cases
        done = sum(c.status == "done" for c in cases)
        errors = sum(c.status == "error" for c in cases)
        self.list_title.setText(f"Cases ({len(cases)})" if cases else "Cases")
        self.queueChanged.emit(done, errors, len(cases))

    def _update_stack(self) -> None:
        self.stack.setCurrentIndex(1 if self.model.rowCount() else 0)

    # ---- removal ------------------------------------------------------------------------------
    def remove_current(self) -> None:
        case = self.current_case()
        if case is None:
            return
        row = self.model.row_of(case)
        op = self._ops.pop(case.id, None)
        if op is not None:
            op.cancel()
        self.cancel_explain(case)
        self._cache.pop(case.id, None)
        self.model.remove(case)
        self._update_stack()
        if self.model.rowCount():
            self.select_row(min(row, self.model.rowCount() - 1))
        else:
            self.view.show_case(None)
            self.currentCaseChanged.emit(None)
        self._emit_queue()

    def clear(self) -> None:
        for op in list(self._ops.values()) + list(self._occl_ops.values()):
            op.cancel()
        self._ops.clear()
        self._cache.clear()
        self.model.clear()
        self.view.show_case(None)
        self._update_stack()
        self.currentCaseChanged.emit(None)
        self._emit_queue()

    def cancel_all(self) -> None:
        for op in list(self._ops.values()) + list(self._occl_ops.values()):
            op.cancel()


__all__ = ["AssessTab", "THUMB_SIDE"]
