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
    QComboBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QToolButton,
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
from mendicant_desktop.app.store import new_patient_code
from mendicant_desktop.core.explain import OcclusionSensitivity
from mendicant_desktop.core.metadata import SEXES, SITES, Metadata
from mendicant_desktop.core.preprocess import load_image

from .case_view import CaseView
from .cases import Case, CaseDelegate, CaseListModel, CaseRole
from .keeper import CaseKeeper
from .qtutil import qimage_png_bytes, rgb_to_qimage
from .services import Services
from .settings import CAM_TARGET_KEY, ESTIMATE_FST_KEY, IDENTIFY_KEY, OVERLAY_PREFIX, THRESHOLD_KEY
from .widgets import DropZone
from .worker import BackgroundOp, scoring_pool

#: Decoded display copies kept in memory; older ones are re-read from disk when selected again.
DISPLAY_CACHE = 12
#: Longest side of the copy kept for display (zoom goes this far; the model never sees it): the app layer's
#: largest preview, which it makes anyway for the quality checks.
DISPLAY_SIDE = PREVIEW_BASE_SIDE
#: Longest side of a case list thumbnail.
THUMB_SIDE = 72

#: The date filter of the case list: label -> days back (None: any date).
DATE_FILTERS: tuple[tuple[str, int | None], ...] = (
    ("Any date", None), ("Today", 0), ("Last 7 days", 6), ("Last 30 days", 29), ("Last 12 months", 364),
)
#: The risk filter of the case list: label -> case predicate key.
RISK_FILTERS: tuple[tuple[str, str | None], ...] = (
    ("All bands", None), ("HIGH band", "high"), ("LOW band", "low"), ("Not scored", "none"),
)

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
        self._rehydrating: set[int] = set()
        #: Asks the user a yes/no question (replaced in tests); the default shows a QMessageBox.
        self.confirm = self._confirm_box
        self.keeper = CaseKeeper(
            services.store, parent=self, clinician=lambda: self.settings.clinician,
            model_version=lambda: services.engine.card.version if services.engine is not None else "")

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
        if services.store is None and services.store_error:
            self.banner.setText(f"<b>Cases are not being saved:</b> {services.store_error}")
            self.banner.setVisible(True)
        self.restore_op = self.keeper.restore()

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
        ll.addLayout(self._build_patient_bar())
        ll.addLayout(self._build_filters())
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
        self.btn_undo = QPushButton("Undo remove")
        self.btn_undo.setToolTip("Bring back the last removed case(s) (Ctrl+Z)")
        self.btn_undo.setEnabled(False)
        btns.addWidget(self.btn_remove)
        btns.addWidget(self.btn_undo)
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
        self.view.recomputeRequested.connect(self.recompute)
        self.btn_remove.clicked.connect(self.remove_current)
        self.btn_undo.clicked.connect(self.undo_remove)
        self.btn_clear.clicked.connect(self.clear)
        self.view.details.detailsEdited.connect(self.set_details)
        self.view.details.followupRequested.connect(self.choose_followup)
        self.view.details.lesion_choices = self.lesion_choices
        self.view.followup.visits_of = self.lesion_visits
        self.view.followup.threshold = lambda: self.services.threshold
        self.view.details.set_identify(self.settings.identify_patients)
        self.keeper.restored.connect(self._restored)
        self.keeper.saved.connect(self._saved)
        self.keeper.message.connect(self.message)
        self.services.engineChanged.connect(self._engine_ready)
        self.services.modelFailed.connect(self._model_failed)
        self.settings.changed.connect(self._setting_changed)

    def _build_patient_bar(self) -> QHBoxLayout:
        """The patient new images belong to (a pseudonymous code; each image starts as a new lesion)."""
        row = QHBoxLayout()
        row.setSpacing(4)
        lab = QLabel("Patient:")
        self.patient_edit = QLineEdit(new_patient_code())
        self.patient_edit.setToolTip("New images are filed under this patient code (each as a new lesion; "
                                     "choose an existing lesion in the case's Patient and lesion card)")
        self.patient_edit.setAccessibleName("Patient code for new images")
        lab.setBuddy(self.patient_edit)
        self.btn_new_patient = QToolButton()
        self.btn_new_patient.setText("New")
        self.btn_new_patient.setToolTip("Start a new patient (a fresh pseudonymous code)")
        self.btn_new_patient.clicked.connect(lambda: self.patient_edit.setText(new_patient_code()))
        row.addWidget(lab)
        row.addWidget(self.patient_edit, 1)
        row.addWidget(self.btn_new_patient)
        return row

    def _build_filters(self) -> QVBoxLayout:
        box = QVBoxLayout()
        box.setSpacing(4)
        self.search = QLineEdit()
        self.search.setPlaceholderText("Search patient, lesion, file, notes")
        self.search.setClearButtonEnabled(True)
        self.search.setAccessibleName("Search cases")
        self.risk_filter = QComboBox()
        for label, key in RISK_FILTERS:
            self.risk_filter.addItem(label, key)
        self.date_filter = QComboBox()
        for label, days in DATE_FILTERS:
            self.date_filter.addItem(label, days)
        row = QHBoxLayout()
        row.setSpacing(4)
        row.addWidget(self.risk_filter, 1)
        row.addWidget(self.date_filter, 1)
        box.addWidget(self.search)
        box.addLayout(row)
        self.search.textChanged.connect(self.apply_filter)
        self.risk_filter.currentIndexChanged.connect(self.apply_filter)
        self.date_filter.currentIndexChanged.connect(self.apply_filter)
        return box

    # ---- filter -------------------------------------------------------------------------------
    def case_matches(self, c: Case) -> bool:
        text = self.search.text().strip().casefold()
        if text and not any(text in s.casefold() for s in (c.name, c.patient_code, c.lesion_label, c.notes,
                                                             c.source)):
            return False
        risk = self.risk_filter.currentData()
        if risk == "none" and c.prediction is not None and c.status == "done":
            return False
        if risk in ("high", "low") and (c.prediction is None or c.status != "done" or c.prediction.risk != risk):
            return False
        days = self.date_filter.currentData()
        if days is not None:
            from datetime import date, timedelta

            d = c.visit_date or (c.scored or c.added).date().isoformat()
            if d < (date.today() - timedelta(days=days)).isoformat():
                return False
        return True

    def apply_filter(self, *_) -> None:
        """Hide the cases the search and filters leave out (they stay in the session and the store)."""
        shown = 0
        for row, c in enumerate(self.model.cases):
            hide = not self.case_matches(c)
            self.list.setRowHidden(row, hide)
            shown += not hide
        n = self.model.rowCount()
        self.list_title.setText(f"Cases ({shown} of {n})" if shown != n else (f"Cases ({n})" if n else "Cases"))
        cur = self.current_case()
        if cur is not None and not self.case_matches(cur):
            for row, c in enumerate(self.model.cases):
                if self.case_matches(c):
                    self.select_row(row)
                    break

    def visible_cases(self) -> list[Case]:
        return [c for row, c in enumerate(self.model.cases) if not self.list.isRowHidden(row)]

    # ---- the case store -----------------------------------------------------------------------
    def _restored(self, cases: list[Case]) -> None:
        if not cases:
            return
        self.model.add(cases)
        self._update_stack()
        if not self.list.currentIndex().isValid():
            self.select_row(self.model.rowCount() - 1)
        self.apply_filter()
        self._emit_queue()
        self.message.emit(f"{len(cases)} saved case{'s' if len(cases) != 1 else ''} reopened")

    def _saved(self, case: Case) -> None:
        cur = self.current_case()
        if cur is not None and (case is cur or (cur.lesion_id is not None and case.lesion_id == cur.lesion_id)):
            self.view.details.show_case(cur)
            self.view.followup.show_case(cur)

    def lesion_choices(self, patient_code: str) -> list[tuple[int, str, int]]:
        """The lesions on file for a patient (from the cases of the list): (id, label, visits)."""
        out: dict[int, list] = {}
        for c in self.model.cases:
            if c.patient_code == patient_code and c.lesion_id is not None and not c.removed:
                e = out.setdefault(c.lesion_id, [c.lesion_label, 0])
                e[1] += 1
                e[0] = e[0] or c.lesion_label
        return [(lid, lab, n) for lid, (lab, n) in sorted(out.items())]

    def lesion_visits(self, case: Case) -> list[Case]:
        """The cases of the same lesion, by visit date, then in the order they were first saved (the store's visit
        id), then added (the follow-up view). Never by scoring time: a case re-scored after a metadata change is
        still the same visit and must not jump ahead of a later image of the same day."""
        if case.lesion_id is None:
            return [case]
        same = [c for c in self.model.cases if c.lesion_id == case.lesion_id and not c.removed]
        return sorted(same, key=lambda c: (c.visit_date or "", c.visit_id is None, c.visit_id or 0, c.added))

    def set_details(self, case: Case, changes: dict) -> None:
        """Patient, lesion, visit date or notes edited in the case's card: keep them and save the case."""
        for k, v in changes.items():
            setattr(case, k, v)
        if "patient_code" in changes and "lesion_choice" not in changes:
            case.lesion_choice = "new"  # another patient: the image is a lesion of that patient
        self.keeper.save(case)
        self._changed(case)

    def choose_followup(self, case: Case) -> None:
        from PySide6.QtWidgets import QFileDialog

        from mendicant_desktop.app.inputs import dialog_filter

        files, _ = QFileDialog.getOpenFileNames(self, f"Follow-up image of {case.lesion_label or case.name}",
                                                self.settings.last_dir, dialog_filter())
        if files:
            self.add_followup(case, files)

    def add_followup(self, case: Case, paths: list[str | os.PathLike]) -> list[Case]:
        """New images of the lesion of ``case``: same patient, lesion, label and patient details."""
        new = []
        for item in iter_inputs(list(paths)):
            c = Case(source=item.path, path=Path(item.path), patient_code=case.patient_code,
                     lesion_label=case.lesion_label, lesion_choice=case.lesion_id, lesion_id=None,
                     metadata=case.metadata)
            if item.error:
                c.status, c.error = "error", item.error
            new.append(c)
        self._add(new)
        if new:
            self.select_case(new[-1])
        return new

    def unsaved_cases(self) -> list[Case]:
        """Cases not (yet) all in the store: being scored or written, or never saved."""
        self.view.details.flush()
        if self.services.store is None:
            return self.model.cases
        return [c for c in self.model.cases if c.unsaved]

    def _confirm_box(self, title: str, text: str, yes: str = "Remove") -> bool:
        box = QMessageBox(QMessageBox.Icon.Question, title, text, QMessageBox.StandardButton.NoButton, self)
        ok = box.addButton(yes, QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        return box.clickedButton() is ok

    # ---- adding cases -------------------------------------------------------------------------
    def add_paths(self, paths: list[str | os.PathLike]) -> list[Case]:
        """Queue files and folders, found as ``--batch`` finds them (:func:`app.inputs.iter_inputs`).

        Entries that cannot be images (a missing file, an unlistable folder) become error cases at once.
        Returns the new cases.
        """
        cases = []
        for item in iter_inputs(list(paths)):
            case = Case(source=item.path, path=Path(item.path), patient_code=self.patient_edit.text().strip())
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
        case = Case(source=label or f"Pasted image {self._paste_n} ({datetime.now():%H:%M:%S})", path=None,
                    patient_code=self.patient_edit.text().strip())
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
            if c.status == "error":
                self.keeper.save(c)
            self._schedule(c)
        self.apply_filter()
        self._emit_queue()

    # ---- scoring ------------------------------------------------------------------------------
    def _schedule(self, case: Case) -> None:
        engine = self.services.engine
        if engine is None or case.id in self._ops or case.status != "queued":
            return
        meta = case.metadata
        threshold = self.services.threshold
        estimate = self.settings.estimate_fst
        cam_target = self.settings.cam_target
        source = case.pending_bytes if case.pending_bytes is not None else case.path

        def op(ctx):
            ctx.check_cancelled()
            ctx.progress(0, 1, "scoring")
            a = try_assess(engine, source, meta, name=case.source, threshold=threshold, estimate_fst=estimate,
                           cam_target=cam_target,
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
                self.keeper.save(case)
                self._changed(case, image_changed=True)
                return
            case.set_assessment(a)
            case.display_qimage = qimg
            case.set_thumb(thumb)
            case.scored = datetime.now()
            case.status = "done"
            self.keeper.save(case)  # saved as it is scored (the image bytes of a paste go with it)
            case.pending_bytes = None
            case.clear_occlusion()
            self._touch(case)
            if case.metadata != meta:  # edited while it was being scored
                self.set_metadata(case, case.metadata, force=True)
            self._changed(case, image_changed=True)

        def failed(exc: BaseException) -> None:  # not a bad input: memory, or a bug
            self._ops.pop(case.id, None)
            case.set_failure(Failure(case.source, failure_reason(exc)))
            self.keeper.save(case)
            self._changed(case, image_changed=True)

        def cancelled() -> None:
            self._ops.pop(case.id, None)

        self._ops[case.id] = (
            BackgroundOp(self, op=op, success=ok).failure(failed).with_progress(started).on_cancel(cancelled)
            .run_in_background(scoring_pool())
        )

    def _engine_ready(self, engine) -> None:
        self.banner.setVisible(False)
        self.view.gauge.model_default = engine.card.threshold
        self.model.not_scored_reason = ""
        sexes = engine.card.raw.get("preprocessing", {}).get("metadata", {}).get("sex") or SEXES
        sites = engine.card.raw.get("preprocessing", {}).get("metadata", {}).get("site") or SITES
        self.view.set_categories([s for s in sexes if s in SEXES] or SEXES, [s for s in sites if s in SITES] or SITES)
        self._rethreshold()
        for c in self.model.cases:
            self._schedule(c)
        cur = self.current_case()  # a reopened case selected before the model was ready: read it again now,
        if cur is not None and cur.restored and cur.x is None and cur.path is not None and cur.status == "done":
            self._rehydrate(cur)  # or its heat map and explanations would stay missing until reselected

    def _model_failed(self, reason: str) -> None:
        # queued cases say why they are not scored, instead of "waiting for the model…" forever
        self.model.not_scored_reason = ("not scored: the model failed verification"
                                        if "verification" in reason else "not scored: the model could not be loaded")
        self.model.refresh_all()
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
        if case.restored and case.assessment is None and case.path is not None:
            self.keeper.save(case)
            self._rehydrate(case)  # re-assessed with the new metadata from the kept image
            return
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
            self.keeper.save(case)
            self._changed(case)

        def failed(exc: BaseException) -> None:
            case.status = "done" if case.prediction is not None else "error"
            self.message.emit(f"Re-scoring {case.name} failed: {exc}")
            self._changed(case)

        cam_target = self.settings.cam_target
        BackgroundOp(self, op=lambda ctx: rescore(engine, scored, meta, threshold=threshold, cam_target=cam_target),
                     success=ok).failure(
            failed).run_in_background()

    def recompute(self, case: Case) -> None:
        """Score ``case`` again with its current metadata (its result predates a metadata change)."""
        self.set_metadata(case, case.metadata, force=True)

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
        self.keeper.save(case)
        self._changed(case)

    # ---- settings -----------------------------------------------------------------------------
    def _setting_changed(self, key: str) -> None:
        if key == THRESHOLD_KEY:
            self._rethreshold()
        elif key == CAM_TARGET_KEY:
            cur = self.current_case()  # the case on screen is explained again at once; others when re-scored
            if cur is not None and cur.assessment is not None and cur.status == "done":
                self.set_metadata(cur, cur.metadata, force=True)
        elif key.startswith(OVERLAY_PREFIX):
            self.view.apply_settings()
        elif key == IDENTIFY_KEY:
            self.view.details.set_identify(self.settings.identify_patients)
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

    def _rehydrate(self, case: Case) -> BackgroundOp | None:
        """A case reopened from the store: read its image (the kept copy) again and assess it, which gives back
        the display, the model input (explanations) and the heat map. Same image, model and metadata: the same
        result as stored; otherwise (another model, edited metadata) the new result is saved."""
        engine = self.services.engine
        if engine is None or case.id in self._rehydrating:
            if engine is None and case.display is None:
                self._reload_display(case)
            return None
        self._rehydrating.add(case.id)
        path, meta, threshold, estimate = case.path, case.metadata, self.services.threshold, self.settings.estimate_fst
        cam_target = self.settings.cam_target

        def op(ctx):
            a = try_assess(engine, path, meta, name=case.name, threshold=threshold, estimate_fst=estimate,
                           cam_target=cam_target,
                           preview_side=DISPLAY_SIDE)
            if isinstance(a, Failure):
                return a, None
            return a, rgb_to_qimage(a.preview).convertToFormat(QImage.Format.Format_RGB32)

        def ok(res) -> None:
            self._rehydrating.discard(case.id)
            a, qimg = res
            if case.removed:
                return
            if isinstance(a, Failure):
                self.message.emit(f"{case.name}: the kept image can no longer be read ({a.reason})")
                return
            if case.sha256 and a.sha256 != case.sha256:
                self.message.emit(f"{case.name}: the image file changed since it was scored; the saved result "
                                  "is shown")
                case.display, case.display_qimage = a.preview, qimg
            else:
                before = case.prediction
                case.set_assessment(a)
                case.display_qimage = qimg
                case.restored = False
                if case.metadata != meta:
                    self.set_metadata(case, case.metadata, force=True)
                elif before is None or before.model_sha256 != a.prediction.model_sha256 or \
                        before.probabilities != a.prediction.probabilities:
                    self.keeper.save(case)
            self._touch(case)
            self._changed(case, image_changed=True)

        def failed(exc: BaseException) -> None:
            self._rehydrating.discard(case.id)
            self.message.emit(f"{case.name}: could not read the saved image again ({failure_reason(exc)})")

        return BackgroundOp(self, op=op, success=ok).failure(failed).run_in_background(scoring_pool())

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
        if case is not None and case.restored and case.x is None and case.path is not None and case.status == "done":
            self._rehydrate(case)
        elif case is not None and case.display is None and case.path is not None and case.status == "done":
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
        shown = sum(not self.list.isRowHidden(r) for r in range(len(cases)))
        self.list_title.setText(f"Cases ({shown} of {len(cases)})" if shown != len(cases)
                                else (f"Cases ({len(cases)})" if cases else "Cases"))
        self.queueChanged.emit(done, errors, len(cases))

    def _update_stack(self) -> None:
        self.stack.setCurrentIndex(1 if self.model.rowCount() else 0)

    # ---- removal ----------------------------------------------------------------------------
    def remove_current(self) -> bool:
        """Remove the selected case after asking; "Undo remove" brings it back."""
        case = self.current_case()
        if case is None:
            return False
        saved = " It is also removed from the cases saved on this computer." if case.visit_id is not None else ""
        if not self.confirm("Remove case", f"Remove {case.name} from the case list?{saved}\n\n"
                            "You can undo this (Edit ▸ Undo remove, Ctrl+Z) until the next removal."):
            return False
        self._remove([case])
        return True

    def clear(self) -> bool:
        """Remove every case shown (the search and filters apply) after asking; undoable as one removal."""
        cases = self.visible_cases()
        if not cases:
            return False
        if not self.confirm("Remove cases", f"Remove all {len(cases)} case{'s' if len(cases) != 1 else ''} shown "
                            "from the list and from the cases saved on this computer?\n\nYou can undo this "
                            "(Ctrl+Z) until the next removal.", yes=f"Remove {len(cases)}"):
            return False
        self._remove(cases)
        return True

    def _remove(self, cases: list[Case]) -> None:
        row = self.list.currentIndex().row()
        for case in cases:
            op = self._ops.pop(case.id, None)
            if op is not None:
                op.cancel()
                case.status = "queued"  # scored again if the removal is undone
            self.cancel_explain(case)
            self._cache.pop(case.id, None)
            self.model.remove(case)
        self.keeper.delete(cases)
        self.btn_undo.setEnabled(True)
        self._update_stack()
        self.apply_filter()
        if self.model.rowCount():
            self.select_row(min(max(row, 0), self.model.rowCount() - 1))
        else:
            self.view.show_case(None)
            self.currentCaseChanged.emit(None)
        n = len(cases)
        self.message.emit(f"{cases[0].name if n == 1 else f'{n} cases'} removed — Ctrl+Z to undo")
        self._emit_queue()

    def undo_remove(self) -> None:
        """Bring back what the last removal took away (into the list and the store)."""
        def done(cases: list[Case]) -> None:
            self.model.add(cases)
            self._update_stack()
            self.apply_filter()
            self.select_case(cases[0])
            for c in cases:
                self._schedule(c)
            self._emit_queue()
            self.message.emit(f"{len(cases)} case{'s' if len(cases) != 1 else ''} restored")

        self.btn_undo.setEnabled(False)
        self.keeper.undo(done)

    def erase_all(self, done=None) -> None:
        """Settings ▸ Erase all local data: every case leaves the list, and the store is emptied."""
        for op in list(self._ops.values()) + list(self._occl_ops.values()):
            op.cancel()
        self._ops.clear()
        self._cache.clear()
        for c in self.model.cases:
            c.removed = True
        self.model.clear()
        self.view.show_case(None)
        self._update_stack()
        self.btn_undo.setEnabled(False)
        self.currentCaseChanged.emit(None)
        self._emit_queue()

        def erased() -> None:
            self.message.emit("All local data erased: cases, patients, image copies and audit runs")
            if done is not None:
                done()

        self.keeper.erase(erased)

    def cancel_all(self) -> None:
        for op in list(self._ops.values()) + list(self._occl_ops.values()):
            op.cancel()


__all__ = ["AssessTab", "THUMB_SIDE"]
