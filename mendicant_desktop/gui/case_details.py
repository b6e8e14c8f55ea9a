"""The "Patient and lesion" card of a case: pseudonymous patient code, lesion (new, or one already on file:
a follow-up visit), lesion label, visit date and notes; name and date of birth only when enabled in Settings.

Edits are emitted as one ``detailsEdited(case, changes)`` when a field is left (or a choice made); the
controller stores them and saves the case.
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QDate, Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDateEdit,
    QFormLayout,
    QFrame,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .cases import Case
from .qtutil import signals_blocked

#: ``lesion_choices(patient_code)`` -> [(lesion id, label, number of visits)], from the cases on file.
LesionChoices = Callable[[str], list[tuple[int, str, int]]]


class _Notes(QPlainTextEdit):
    """A notes box that reports when it loses focus (a plain-text edit has no editingFinished)."""

    left = Signal()

    def focusOutEvent(self, e) -> None:  # noqa: N802
        super().focusOutEvent(e)
        self.left.emit()


class CaseDetailsCard(QFrame):
    detailsEdited = Signal(object, dict)  # Case, {field: value}
    followupRequested = Signal(object)  # Case: add a new image of the same lesion

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        self.case: Case | None = None
        self.lesion_choices: LesionChoices = lambda code: []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(6)
        title = QLabel("Patient and lesion")
        title.setObjectName("CardTitle")
        lay.addWidget(title)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        self.patient = QLineEdit()
        self.patient.setPlaceholderText("pseudonymous code, e.g. P-7K3QX9")
        self.patient.setToolTip("The patient's code in this clinic's records. Cases with the same code are one "
                                "patient; no name is stored unless enabled in Settings.")
        self.patient_name = QLineEdit()
        self.birth_date = QLineEdit()
        self.birth_date.setPlaceholderText("YYYY-MM-DD")
        self.lesion = QComboBox()
        self.lesion.setToolTip("A new lesion, or a lesion already on file for this patient (a follow-up visit)")
        self.lesion.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.lesion.setMinimumContentsLength(12)
        self.label = QLineEdit()
        self.label.setPlaceholderText("e.g. left shoulder, upper")
        self.label.setToolTip("A short name for the lesion, so a later visit can be matched to it")
        self.visit_date = QDateEdit()
        self.visit_date.setCalendarPopup(True)
        self.visit_date.setDisplayFormat("yyyy-MM-dd")
        self.notes = _Notes()
        self.notes.setPlaceholderText("Notes (kept with the case, printed in the report)")
        self.notes.setTabChangesFocus(True)
        self.notes.setFixedHeight(58)
        self.save_state = QLabel("")
        self.save_state.setObjectName("Muted")
        form.addRow("Patient:", self.patient)
        self._name_row = ("Name:", self.patient_name)
        self._dob_row = ("Date of birth:", self.birth_date)
        form.addRow(*self._name_row)
        form.addRow(*self._dob_row)
        form.addRow("Lesion:", self.lesion)
        form.addRow("Label:", self.label)
        form.addRow("Visit date:", self.visit_date)
        self.form = form
        lay.addLayout(form)
        lay.addWidget(self.notes)
        self.followup_btn = QPushButton("Add a follow-up image of this lesion…")
        self.followup_btn.setToolTip("Score a new photo of the same lesion (same patient, lesion and details) and "
                                     "compare it with this visit")
        self.followup_btn.clicked.connect(lambda: self.case is not None and self.followupRequested.emit(self.case))
        lay.addWidget(self.followup_btn, 0, Qt.AlignmentFlag.AlignLeft)
        lay.addWidget(self.save_state)
        self.set_identify(False)

        self.patient.editingFinished.connect(lambda: self._edited("patient_code", self.patient.text().strip()))
        self.patient_name.editingFinished.connect(lambda: self._edited("patient_name", self.patient_name.text()))
        self.birth_date.editingFinished.connect(lambda: self._edited("birth_date", self.birth_date.text()))
        self.label.editingFinished.connect(lambda: self._edited("lesion_label", self.label.text().strip()))
        self.lesion.activated.connect(self._lesion_chosen)
        self.visit_date.dateChanged.connect(
            lambda d: self._edited("visit_date", d.toString(Qt.DateFormat.ISODate)))
        self.notes.left.connect(lambda: self._edited("notes", self.notes.toPlainText()))

    def set_identify(self, on: bool) -> None:
        """Show the name and date-of-birth fields (Settings: "Record patient names")."""
        for _label, w in (self._name_row, self._dob_row):
            self.form.setRowVisible(w, on)

    def _edited(self, key: str, value) -> None:
        c = self.case
        if c is None or getattr(c, key, None) == value:
            return
        self.detailsEdited.emit(c, {key: value})

    def _lesion_chosen(self, i: int) -> None:
        if self.case is None:
            return
        data = self.lesion.itemData(i)
        if data == self.case.lesion_id:
            return
        label = self.label.text() if data == "new" else self.lesion.itemData(i, Qt.ItemDataRole.UserRole + 1)
        self.detailsEdited.emit(self.case, {"lesion_choice": data, "lesion_label": label or ""})

    def flush(self) -> None:
        """Emit an edit still in a field that has focus (before quitting or switching cases)."""
        if self.case is None:
            return
        if self.notes.toPlainText() != self.case.notes:
            self._edited("notes", self.notes.toPlainText())
        for key, w in (("patient_code", self.patient), ("lesion_label", self.label)):
            if w.text().strip() != getattr(self.case, key):
                self._edited(key, w.text().strip())

    def pending(self) -> bool:
        """A field holds text not yet taken into the case."""
        c = self.case
        return c is not None and (self.notes.toPlainText() != c.notes or self.patient.text().strip() != c.patient_code
                                  or self.label.text().strip() != c.lesion_label)

    def show_case(self, case: Case | None) -> None:
        if case is not None and case is not self.case:
            self.flush()
        self.case = case
        self.setVisible(case is not None)
        if case is None:
            return
        with signals_blocked(self.patient, self.label, self.notes, self.visit_date, self.lesion,
                             self.patient_name, self.birth_date):
            self.patient.setText(case.patient_code)
            self.label.setText(case.lesion_label)
            if self.notes.toPlainText() != case.notes:
                self.notes.setPlainText(case.notes)
            d = QDate.fromString(case.visit_date, Qt.DateFormat.ISODate) if case.visit_date else QDate.currentDate()
            self.visit_date.setDate(d if d.isValid() else QDate.currentDate())
            self.lesion.clear()
            self.lesion.addItem("New lesion", "new")
            current = 0
            for lid, label, n in self.lesion_choices(case.patient_code):
                self.lesion.addItem(f"#{lid} {label or 'unlabelled'} ({n} visit{'s' if n != 1 else ''})", lid)
                self.lesion.setItemData(self.lesion.count() - 1, label, Qt.ItemDataRole.UserRole + 1)
                if lid == case.lesion_id:
                    current = self.lesion.count() - 1
            if case.lesion_id is not None and current == 0:
                self.lesion.addItem(f"#{case.lesion_id} {case.lesion_label or 'unlabelled'}", case.lesion_id)
                current = self.lesion.count() - 1
            self.lesion.setCurrentIndex(current)
        self.lesion.setEnabled(case.status == "done")
        self.followup_btn.setEnabled(case.status == "done" and case.lesion_id is not None)
        if case.save_error:
            self.save_state.setText(f"⚠ Not saved: {case.save_error}")
        elif case.visit_id is not None and not (case.saving or case.needs_save):
            self.save_state.setText("✔ Saved on this computer")
        elif case.status in ("queued", "scoring"):
            self.save_state.setText("Saved once scored")
        else:
            self.save_state.setText("Saving…")


__all__ = ["CaseDetailsCard"]
