"""The window's side of the case store: saves cases as they are scored or edited, restores them at start-up,
deletes with undo, erases. Every store call runs in the one worker helper, on a one-thread pool (so saves,
deletes and undo happen in the order asked, and the GUI thread never waits on the disk).

A case has at most one save running; an edit made meanwhile sets ``needs_save`` and is saved when that one
ends, with the ids (visit, lesion) the first save wrote. Those ids are written on the store's thread only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, Signal

from mendicant_desktop.app.errors import failure_reason
from mendicant_desktop.app.store import CaseStore, Visit, assessment_record, thumbnail_png
from mendicant_desktop.core.metadata import Metadata

from .cases import Case
from .worker import BackgroundOp, store_pool


@dataclass(frozen=True)
class _Snapshot:
    """What one save writes, taken on the GUI thread."""

    name: str
    path: str | None
    status: str
    error: str
    sha256: str | None
    width: int | None
    height: int | None
    metadata: Metadata
    record: dict[str, Any] | None
    fst_override: str | None
    notes: str
    patient_code: str
    patient_name: str
    birth_date: str
    lesion_label: str
    lesion_choice: object
    thumb: np.ndarray | None
    image_bytes: bytes | None
    visit_date: str | None
    clinician: str


def case_from_visit(v: Visit) -> Case:
    """A case of the list from a stored visit (its image: the kept copy, else the original if still there)."""
    f = v.image_file
    c = Case(source=v.path or v.name, path=Path(f) if f else None, title=v.name, status=v.status, error=v.error)
    c.visit_id, c.lesion_id, c.restored = v.id, v.lesion_id, True
    c.patient_code, c.lesion_label = v.patient_code or "", v.lesion_label or ""
    c.notes, c.visit_date, c.fst_override = v.notes, v.visit_date or "", v.fst_override
    c.metadata = v.meta()
    c.sha256, c.width, c.height = v.sha256 or "", v.width or 0, v.height or 0
    if v.result:
        c.prediction, c.skin = v.prediction(), v.skin()
        c.scored_metadata = c.metadata  # a saved result is saved with the metadata it was computed with
        r = v.result
        c.image_warnings = list(r.get("image_warnings", r.get("warnings") or []))
        c.domain_warnings = list(r.get("domain_warnings", []))
    if v.scored:
        try:
            c.scored = datetime.fromisoformat(v.scored).replace(tzinfo=None)
        except ValueError:
            c.scored = None
    if v.thumbnail:
        from PIL import Image

        with contextlib.suppress(OSError):
            c.set_thumb(np.asarray(Image.open(io.BytesIO(v.thumbnail)).convert("RGB")))
    if f is None and c.status == "done":
        c.image_warnings = [*c.image_warnings, "the image file is no longer available (no copy was kept)"]
    return c


class CaseKeeper(QObject):
    """Saves, restores, deletes and undoes cases in the store (``store`` None: nothing is kept)."""

    restored = Signal(object)  # list[Case], oldest first
    saved = Signal(object)  # Case
    message = Signal(str)

    def __init__(self, store: CaseStore | None, *, model_version=lambda: "", clinician=lambda: "",
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.store = store
        self._model_version = model_version
        self._clinician = clinician
        self.last_deleted: list[Case] = []

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def _run(self, op, success, what: str) -> BackgroundOp:
        def failed(exc: BaseException) -> None:
            self.message.emit(f"Could not {what}: {failure_reason(exc, 'using the case store')}")

        return BackgroundOp(self, op=op, success=success).failure(failed).run_in_background(store_pool())

    def wait_idle(self, msecs: int = 5000) -> bool:
        """Block until every queued store call has run (quit)."""
        return store_pool().waitForDone(msecs)

    # ---- saving ---------------------------------------------------------------------------------------------
    def _snapshot(self, case: Case) -> _Snapshot:
        record = None
        if case.assessment is not None and case.prediction is not None:
            a = dataclasses.replace(case.assessment, prediction=dataclasses.replace(case.prediction, cam=None))
            record = assessment_record(a, self._model_version())
        choice, case.lesion_choice = case.lesion_choice, None
        return _Snapshot(
            name=case.name, path=None if case.restored or case.path is None else str(case.path), status=case.status,
            error=case.error, sha256=case.sha256 or None, width=case.width or None, height=case.height or None,
            metadata=case.metadata, record=record, fst_override=case.fst_override, notes=case.notes,
            patient_code=case.patient_code.strip(), patient_name=case.patient_name, birth_date=case.birth_date,
            lesion_label=case.lesion_label, lesion_choice=choice,
            thumb=case.thumb, image_bytes=case.pending_bytes, visit_date=case.visit_date or None,
            clinician=self._clinician())

    def save(self, case: Case) -> BackgroundOp | None:
        """Write the case as it is now (insert the first time, then update)."""
        if self.store is None or case.removed or case.status in ("queued", "scoring"):
            return None
        if case.saving:
            case.needs_save = True
            return None
        case.saving, case.needs_save = True, False
        snap, store = self._snapshot(case), self.store

        def op(ctx):
            return _write(store, case, snap)

        def ok(_vid) -> None:
            case.saving, case.save_error = False, ""
            if case.needs_save:
                self.save(case)
            self.saved.emit(case)

        def failed(exc: BaseException) -> None:
            case.saving = False
            case.save_error = failure_reason(exc, "saving the case")
            self.message.emit(f"{case.name} was not saved: {case.save_error}")
            self.saved.emit(case)

        return BackgroundOp(self, op=op, success=ok).failure(failed).run_in_background(store_pool())

    # ---- restore, delete, undo, erase -----------------------------------------------------------------------
    def restore(self) -> BackgroundOp | None:
        """Load every stored case; ``restored`` is emitted with them."""
        if self.store is None:
            return None
        store = self.store
        return self._run(lambda ctx: store.visits(), lambda vs: self.restored.emit([case_from_visit(v) for v in vs]),
                         "read the saved cases")

    def delete(self, cases: list[Case]) -> BackgroundOp | None:
        """Remove cases from the store as one delete (undone by :meth:`undo`)."""
        for c in cases:
            c.removed = True
        self.last_deleted = list(cases)
        if self.store is None:
            return None
        store = self.store
        # visit ids are read on the store's thread: a save still running for one of them has finished by then
        return self._run(lambda ctx: store.delete_visits([c.visit_id for c in cases if c.visit_id is not None]),
                         lambda _: None, "delete the case")

    def undo(self, done) -> BackgroundOp | None:
        """Bring back the last deleted cases; ``done(cases)`` on the GUI thread."""
        cases, self.last_deleted = self.last_deleted, []
        if not cases:
            return None
        for c in cases:
            c.removed = False
        if self.store is None:
            done(cases)
            return None
        store = self.store
        return self._run(lambda ctx: store.undo_delete(), lambda _: done(cases), "undo the delete")

    def erase(self, done) -> BackgroundOp | None:
        """Erase every saved case, patient, image copy and audit run; ``done()`` on the GUI thread."""
        self.last_deleted = []
        if self.store is None:
            done()
            return None
        store = self.store
        return self._run(lambda ctx: store.erase_all(), lambda _: done(), "erase the local data")

    def save_audit(self, inputs: dict[str, Any], results: dict[str, Any], model_name: str = "",
                   model_sha256: str = "") -> BackgroundOp | None:
        if self.store is None:
            return None
        store = self.store
        return self._run(lambda ctx: store.save_audit_run(inputs, results, model_name=model_name,
                                                          model_sha256=model_sha256),
                         lambda _: None, "save the audit run")


def _write(store: CaseStore, case: Case, s: _Snapshot) -> int:
    """One save, on the store's thread: patient, lesion, then the visit (insert or update)."""
    pid = store.add_patient(s.patient_code).id if s.patient_code else None
    if pid is not None and (s.patient_name or s.birth_date):
        store.update_patient(pid, name=s.patient_name, birth_date=s.birth_date)
    lesion_id = case.lesion_id
    if s.lesion_choice == "new":
        lesion_id = None
    elif isinstance(s.lesion_choice, int):
        lesion_id = s.lesion_choice
    if lesion_id is not None:
        les = store.lesion(lesion_id)
        if les is None or (pid is not None and les.patient_id != pid):
            lesion_id = None  # the patient changed: the image is a lesion of the new patient
    site = s.metadata.site
    if lesion_id is None and pid is not None and s.status == "done":
        lesion_id = store.add_lesion(pid, label=s.lesion_label, site=site).id
    elif lesion_id is not None:
        store.update_lesion(lesion_id, label=s.lesion_label, site=site if site != "unknown" else None)
    case.lesion_id = lesion_id
    fields: dict[str, Any] = dict(name=s.name, status=s.status, error=s.error, sha256=s.sha256, width=s.width,
                                  height=s.height, metadata=s.metadata, fst_override=s.fst_override, notes=s.notes,
                                  lesion_id=lesion_id, clinician=s.clinician)
    if s.visit_date:
        fields["visit_date"] = s.visit_date
    if case.visit_id is None:
        copy = None
        if s.status == "done" and s.sha256:
            copy = store.copy_image(s.sha256, source=s.path if s.image_bytes is None else None, data=s.image_bytes,
                                    suffix=".png" if s.image_bytes is not None else "")
        thumb = thumbnail_png(s.thumb) if s.thumb is not None else None
        case.visit_id = store.save_visit(path=s.path, result=s.record, image_copy=copy, thumbnail=thumb, **fields)
    else:
        if s.record is not None:
            fields["result"] = s.record
        if s.path is not None:
            fields["path"] = s.path
        store.update_visit(case.visit_id, **fields)
    return case.visit_id


__all__ = ["CaseKeeper", "case_from_visit"]
