"""Settings dialog: inference threads, operating threshold, overlay colour scale and opacity, FST estimate."""

from __future__ import annotations

import os

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop.core.saliency import COLORMAPS

from .settings import AppSettings, is_portable
from .widgets import ColormapLegend


class SettingsDialog(QDialog):
    def __init__(self, settings: AppSettings, model_threshold: float | None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings — MENDICANT")
        self.settings = settings
        self.model_threshold = model_threshold
        self.setMinimumWidth(520)
        root = QVBoxLayout(self)

        root.addWidget(self._build_model_group())
        root.addWidget(self._build_heatmap_group())
        root.addWidget(self._build_skin_group())

        where = QLabel(f"Settings file: {settings.path}" + ("  (portable mode)" if is_portable() else ""))
        where.setObjectName("Muted")
        where.setWordWrap(True)
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        root.addWidget(where)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        root.addWidget(buttons)

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
        self.opacity.valueChanged.connect(lambda v: self.opacity_label.setText(f"{v}%"))
        op_row.addWidget(self.opacity, 1)
        op_row.addWidget(self.opacity_label)
        f2.addRow("Opacity:", op_row)
        return g2

    def _build_skin_group(self) -> QGroupBox:
        """Whether to estimate the skin type from each image."""
        g3 = QGroupBox("Skin type")
        v3 = QVBoxLayout(g3)
        self.estimate_fst = QCheckBox("Estimate the Fitzpatrick skin type from each image (ITA)")
        self.estimate_fst.setChecked(self.settings.estimate_fst)
        v3.addWidget(self.estimate_fst)
        n3 = QLabel("The estimate is labelled as such and can be overridden per case; it does not change the "
                    "model's score.")
        n3.setObjectName("Muted")
        n3.setWordWrap(True)
        v3.addWidget(n3)
        return g3

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
        if self.model_threshold is None:
            self.thr_note.setText("The model's default is shown once a model is loaded.")
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
        if s.threshold != new_thr:
            s.threshold = new_thr
        if s.colormap != self.colormap.currentText():
            s.colormap = self.colormap.currentText()
        if abs(s.opacity - self.opacity.value() / 100) > 1e-6:
            s.opacity = self.opacity.value() / 100
        if s.estimate_fst != self.estimate_fst.isChecked():
            s.estimate_fst = self.estimate_fst.isChecked()

    def accept(self) -> None:
        self.apply()
        super().accept()
