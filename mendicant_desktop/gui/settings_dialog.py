"""Settings dialog: inference threads, operating threshold, overlay colour scale and opacity, FST estimate."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop.core.saliency import COLORMAPS

from .settings import AppSettings, is_portable
from .widgets import ColormapLegend


class SettingsDialog(QDialog):
    eraseRequested = Signal()  # "Erase all local data…" (the window asks for confirmation and erases)

    def __init__(self, settings: AppSettings, model_threshold: float | None, parent: QWidget | None = None,
                 store=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings — MENDICANT")
        self.settings = settings
        self.model_threshold = model_threshold
        self.setMinimumWidth(560)
        outer = QVBoxLayout(self)
        scroll = QScrollArea()  # on a 640-pixel-high screen the groups scroll instead of being squashed
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        scroll.setWidget(body)
        outer.addWidget(scroll, 1)
        root = QVBoxLayout(body)
        root.setContentsMargins(0, 0, 6, 0)

        root.addWidget(self._build_model_group())
        root.addWidget(self._build_heatmap_group())
        root.addWidget(self._build_skin_group())
        root.addWidget(self._build_cases_group(settings, store))

        where = QLabel(f"Settings file: {settings.path}" + ("  (portable mode)" if is_portable() else ""))
        where.setObjectName("Muted")
        where.setWordWrap(True)
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(where)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        outer.addWidget(buttons)
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        want = body.sizeHint().height() + buttons.sizeHint().height() + 40
        self.resize(max(560, body.sizeHint().width() + 30), min(want, screen.height() - 60) if screen else want)

    def _build_model_group(self) -> QGroupBox:
        """Inference threads and the operating threshold (with its reset and its note)."""
        g1 = QGroupBox("Model")
        f1 = QFormLayout(g1)
        f1.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.threads = QSpinBox()
        self.threads.setRange(1, max(2, (os.cpu_count() or 2) * 2))
        self.threads.setValue(self.settings.threads)
        self.threads.setToolTip("CPU threads ONNX Runtime may use. More is faster up to the number of cores.")
        self.threads.setMaximumWidth(90)
        th_row = QHBoxLayout()
        th_row.addWidget(self.threads)
        th_row.addWidget(QLabel(f"(this computer has {os.cpu_count() or '?'} cores)"))
        th_row.addStretch(1)
        f1.addRow("Inference threads:", th_row)
        thr_row = QHBoxLayout()
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.01, 0.99)
        self.threshold.setDecimals(3)
        self.threshold.setSingleStep(0.005)
        self.threshold.setValue(self.settings.effective_threshold(self.model_threshold or 0.5))
        self.threshold.setToolTip("Malignancy score at or above which a case is in the HIGH band.")
        self.reset_thr = QPushButton("Reset to model default")
        self.reset_thr.setEnabled(self.model_threshold is not None)
        self.reset_thr.clicked.connect(self._reset_threshold)
        thr_row.addWidget(self.threshold)
        thr_row.addWidget(self.reset_thr)
        thr_row.addStretch(1)
        f1.addRow("Operating threshold:", thr_row)
        self.thr_note = QLabel()
        self.thr_note.setObjectName("Muted")
        self.thr_note.setWordWrap(True)
        f1.addRow("", self.thr_note)
        self._user_threshold = self.settings.threshold
        self.threshold.valueChanged.connect(self._threshold_edited)
        site = self.settings.site
        self.threshold_locked = site.locked
        if site.locked:  # IT's site file sets it and does not let users change it
            self.threshold.setEnabled(False)
            self.reset_thr.setEnabled(False)
            self.threshold.setToolTip(f"Set by your clinic's IT in {site.path}; it cannot be changed here.")
        self._update_thr_note()
        return g1

    def _build_heatmap_group(self) -> QGroupBox:
        """The heat map's colour scale (with its legend) and opacity."""
        g2 = QGroupBox("Heat map (Grad-CAM)")
        f2 = QFormLayout(g2)
        f2.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.colormap = QComboBox()
        self.colormap.addItems(list(COLORMAPS))
        self.colormap.setCurrentText(self.settings.colormap)
        self.legend = ColormapLegend()
        self.legend.set_colormap(self.settings.colormap)
        self.colormap.currentTextChanged.connect(self.legend.set_colormap)
        f2.addRow("Colour scale:", self.colormap)
        f2.addRow("", self.legend)
        op_row = QHBoxLayout()
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(self.settings.opacity * 100))
        self.opacity_label = QLabel(f"{self.opacity.value()}%")
        self.opacity_label.setMinimumWidth(40)
        self.opacity.valueChanged.connect(self._show_opacity)
        op_row.addWidget(self.opacity, 1)
        op_row.addWidget(self.opacity_label)
        f2.addRow("Opacity:", op_row)
        from mendicant_desktop.core.results import CLASS_FULL_NAMES, CLASS_NAMES

        self.cam_target = QComboBox()
        self.cam_target.addItem("the malignancy score (default)", "malignancy")
        self.cam_target.addItem("the most likely class", "top")
        for c in CLASS_NAMES:
            self.cam_target.addItem(f"{CLASS_FULL_NAMES[c]} ({c})", c)
        self.cam_target.setCurrentIndex(max(0, self.cam_target.findData(self.settings.cam_target)))
        self.cam_target.setToolTip("What the Grad-CAM map explains; the caption under the image names it")
        f2.addRow("Explain:", self.cam_target)
        return g2

    def _build_skin_group(self) -> QGroupBox:
        """Whether to estimate the skin type from each image."""
        g3 = QGroupBox("Skin type")
        v3 = QVBoxLayout(g3)
        self.estimate_fst = QCheckBox("Estimate the Fitzpatrick skin type from each image (skin colour around the lesion)")
        self.estimate_fst.setChecked(self.settings.estimate_fst)
        v3.addWidget(self.estimate_fst)
        n3 = QLabel("The estimate is labelled as such and can be overridden per case; it does not change the "
                    "model's score.")
        n3.setObjectName("Muted")
        n3.setWordWrap(True)
        v3.addWidget(n3)
        return g3

    def _build_cases_group(self, settings: AppSettings, store) -> QGroupBox:
        g = QGroupBox("Cases and reports")
        f = QFormLayout(g)
        f.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.copy_images = QCheckBox("Keep a copy of each image for follow-up")
        self.copy_images.setToolTip("The copy stays on this computer, beside the saved cases, so a later visit can "
                                    "be compared even when the original file is moved or deleted.")
        self.copy_images.setChecked(settings.copy_images)
        self.identify = QCheckBox("Record patient names and dates of birth")
        self.identify.setToolTip("Off: patients are pseudonymous codes only.")
        self.identify.setChecked(settings.identify_patients)
        self.clinician = QLineEdit(settings.clinician)
        self.clinician.setPlaceholderText("printed on reports")
        self.clinic = QLineEdit(settings.clinic)
        self.clinic.setPlaceholderText("printed on reports")
        f.addRow(self.copy_images)
        f.addRow(self.identify)
        f.addRow("Clinician:", self.clinician)
        f.addRow("Clinic:", self.clinic)
        row = QHBoxLayout()
        self.erase_btn = QPushButton("Erase all local data…")
        self.erase_btn.setObjectName("DangerButton")
        self.erase_btn.setToolTip("Delete every saved case, patient, image copy and audit run on this computer")
        self.erase_btn.setEnabled(store is not None)
        self.erase_btn.clicked.connect(self.eraseRequested)
        row.addWidget(self.erase_btn)
        row.addStretch(1)
        f.addRow(row)
        loc = QLabel(f"Saved cases: {store.path}" if store is not None else "Cases are not being saved (the case "
                     "store could not be opened).")
        loc.setObjectName("Muted")
        loc.setWordWrap(True)
        loc.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        f.addRow(loc)
        return g

    def _show_opacity(self, v: int) -> None:
        # a bound method, not a lambda capturing ``self``: a lambda's closure kept the dialog's wrapper in a cycle
        # that Python broke at exit after Qt had freed the widgets ("shared QObject was deleted directly")
        self.opacity_label.setText(f"{v}%")

    def _threshold_edited(self, v: float) -> None:
        self._user_threshold = v
        self._update_thr_note()

    def _reset_threshold(self) -> None:
        if self.model_threshold is None:
            return
        self.threshold.blockSignals(True)
        self.threshold.setValue(self.model_threshold)
        self.threshold.blockSignals(False)
        self._user_threshold = None
        self._update_thr_note()

    def _update_thr_note(self) -> None:
        site = self.settings.site
        if site.locked:
            default = f"; the model's validated default is {self.model_threshold:.3f}" if self.model_threshold else ""
            self.thr_note.setText(f"Set by your clinic's IT ({site.path}){default}. Users cannot change it.")
            return
        if self.model_threshold is None:
            self.thr_note.setText("The model's default is shown once a model is loaded.")
        elif self._user_threshold is None and site.threshold is not None:
            self.thr_note.setText(f"Using the site default set by IT ({site.threshold:.3f}); the model's validated "
                                  f"default is {self.model_threshold:.3f}.")
        elif self._user_threshold is None:
            self.thr_note.setText(f"Using the model's default ({self.model_threshold:.3f}), chosen by its developers.")
        else:
            self.thr_note.setText(f"Custom threshold; the model's default is {self.model_threshold:.3f}. A lower "
                                  "threshold flags more cases as HIGH (more sensitive, less specific).")

    def apply(self) -> None:
        """Write the dialog's values to the settings (called on OK)."""
        s = self.settings
        if s.threads != self.threads.value():
            s.threads = self.threads.value()
        new_thr = self._user_threshold
        if new_thr is not None and self.model_threshold is not None and abs(new_thr - self.model_threshold) < 1e-9:
            new_thr = None
        if not s.site.locked and s.threshold != new_thr:
            s.threshold = new_thr
        if s.colormap != self.colormap.currentText():
            s.colormap = self.colormap.currentText()
        if abs(s.opacity - self.opacity.value() / 100) > 1e-6:
            s.opacity = self.opacity.value() / 100
        if s.estimate_fst != self.estimate_fst.isChecked():
            s.estimate_fst = self.estimate_fst.isChecked()
        if s.cam_target != self.cam_target.currentData():
            s.cam_target = self.cam_target.currentData()
        if s.copy_images != self.copy_images.isChecked():
            s.copy_images = self.copy_images.isChecked()
        if s.identify_patients != self.identify.isChecked():
            s.identify_patients = self.identify.isChecked()
        if s.clinician != self.clinician.text().strip():
            s.clinician = self.clinician.text()
        if s.clinic != self.clinic.text().strip():
            s.clinic = self.clinic.text()

    def accept(self) -> None:
        self.apply()
        super().accept()
