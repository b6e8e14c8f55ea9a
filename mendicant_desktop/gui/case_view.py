"""The case view: image + Grad-CAM overlay on the left, assessment details on the right."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QSplitter,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop.app.inputs import formats_text
from mendicant_desktop.core.metadata import SEXES, SITES, Metadata
from mendicant_desktop.core.saliency import COLORMAPS
from mendicant_desktop.core.skintone import FST_TYPES

from . import text
from .case_details import CaseDetailsCard
from .cases import Case
from .followup import FollowUpCard
from .qtutil import signals_blocked
from .settings import AppSettings
from .widgets import ColormapLegend, ElidedLabel, ImageView, ProbabilityBars, RiskGauge


class Card(QFrame):
    """A titled white panel."""

    def __init__(self, title: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        self.lay = QVBoxLayout(self)
        self.lay.setContentsMargins(12, 10, 12, 12)
        self.lay.setSpacing(6)
        self.title = QLabel(title)
        self.title.setObjectName("CardTitle")
        self.lay.addWidget(self.title)


def _wrap_label(obj: str = "") -> QLabel:
    lab = QLabel()
    lab.setWordWrap(True)
    lab.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    lab.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)
    if obj:
        lab.setObjectName(obj)
    return lab


#: Image-column widths (px) below which the patient fields take two rows and the image tools get compact.
COMPACT_META_WIDTH = 540
NARROW_TOOLS_WIDTH = 500
SLIDER_WIDTH = 70
NARROW_SLIDER_WIDTH = 40
VERY_NARROW_TOOLS_WIDTH = 470


class CaseView(QWidget):
    """Shows one :class:`Case`. Emits edits; the controller re-scores and calls :meth:`show_case` again."""

    metadataEdited = Signal(object, object)  # Case, Metadata
    fstOverrideEdited = Signal(object, object)  # Case, str | None
    resultShown = Signal(object)  # Case (a scored case is on screen, overlay included)
    explainRequested = Signal(object)  # Case: run occlusion sensitivity ("Detailed explanation")
    explainCancelRequested = Signal(object)  # Case
    recomputeRequested = Signal(object)  # Case: score it again with its current metadata (a stale result)

    #: Overlay sources the mode combo offers (the occlusion one only once a case has its map).
    MODES = ("Grad-CAM", "Occlusion")

    def __init__(self, settings: AppSettings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.case: Case | None = None
        self._mode = "Grad-CAM"  # the overlay the user chose; Occlusion falls back when a case has none
        self._sexes: tuple[str, ...] = SEXES
        self._sites: tuple[str, ...] = SITES

        root = QVBoxLayout(self)
        root.setContentsMargins(0, 0, 0, 0)
        root.setSpacing(0)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.setChildrenCollapsible(False)
        root.addWidget(split)
        self.splitter = split

        split.addWidget(self._build_image_column())
        split.addWidget(self._build_details())
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 0)
        split.setSizes([640, 420])
        split.splitterMoved.connect(lambda *_: self._adapt())
        self.set_categories(SEXES, SITES)

        self._wire()
        self.show_case(None)

    def _build_image_column(self) -> QWidget:
        """Title and status, the image tools, the explanation row, the image, its legend, patient details."""
        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(8, 8, 4, 8)
        ll.setSpacing(6)
        head = QHBoxLayout()
        self.title = ElidedLabel("")  # a long name ends in "…" (the full name in the tooltip), never clipped
        self.title.setObjectName("CaseTitle")
        self.status = QLabel("")
        self.status.setObjectName("CaseStatus")
        head.addWidget(self.title, 1)
        head.addWidget(self.status)
        ll.addLayout(head)

        ll.addWidget(self._build_image_tools())
        ll.addWidget(self._build_explain_row())
        self.view = ImageView()
        ll.addWidget(self.view, 1)
        ll.addWidget(self._build_legend())
        # patient details sit under the image: they are inputs, and stay visible without scrolling
        ll.addWidget(self._build_meta_card())
        self._left = left
        left.installEventFilter(self)  # re-flow the patient fields when the image column is resized
        return left


    def _build_image_tools(self) -> QWidget:
        """Heat-map switch, opacity, colour scale, heat-map source and the zoom buttons."""
        self.image_tools = QWidget()
        bar = QHBoxLayout(self.image_tools)
        bar.setContentsMargins(0, 0, 0, 0)
        bar.setSpacing(6)
        self.overlay_box = QCheckBox("Heat map")
        self.overlay_box.setToolTip("Show the Grad-CAM heat map over the image (Ctrl+H)")
        self.overlay_box.setChecked(self.settings.show_overlay)
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(round(self.settings.opacity * 100))
        self.opacity.setMinimumWidth(SLIDER_WIDTH)
        self.opacity.setMaximumWidth(140)
        self.opacity.setToolTip("Heat-map opacity")
        self.opacity.setAccessibleName("Heat-map opacity")
        self.colormap = QComboBox()
        self.colormap.addItems(list(COLORMAPS))
        self.colormap.setCurrentText(self.settings.colormap)
        self.colormap.setToolTip("Heat-map colour scale")
        bar.addWidget(self.overlay_box)
        self.op_label = QLabel("Opacity")
        self.op_label.setBuddy(self.opacity)
        bar.addWidget(self.op_label)
        bar.addWidget(self.opacity)
        bar.addWidget(self.colormap)
        self.mode = QComboBox()
        self.mode.addItems(list(self.MODES))
        self.mode.setToolTip("Heat map shown: Grad-CAM (with every assessment) or occlusion sensitivity "
                             "(after \u201cDetailed explanation\u201d)")
        self.mode.setAccessibleName("Heat-map source")
        bar.addWidget(self.mode)
        bar.addStretch(1)
        self.btn_out = self._tool("−", "Zoom out (Ctrl+-)")
        self.btn_in = self._tool("+", "Zoom in (Ctrl++)")
        self.btn_100 = self._tool("1:1", "Actual pixels")
        self.btn_fit = self._tool("Fit", "Fit to window (Ctrl+0)")
        for b in (self.btn_out, self.btn_in, self.btn_100, self.btn_fit):
            bar.addWidget(b)
        return self.image_tools


    def _build_explain_row(self) -> QWidget:
        """"Detailed explanation" (occlusion sensitivity): button, progress and cancel."""
        self.explain_row = QWidget()
        er = QHBoxLayout(self.explain_row)
        er.setContentsMargins(0, 0, 0, 0)
        er.setSpacing(6)
        self.btn_explain = QPushButton("Detailed explanation…")
        self.btn_explain.setToolTip(
            "Occlusion sensitivity: hide each part of the image in turn and measure how much the malignancy "
            "score changes. Runs in the background; this takes several seconds.")
        self.explain_bar = QProgressBar()
        self.explain_bar.setMaximumHeight(16)
        self.explain_bar.setFormat("Occlusion %p%")
        self.explain_bar.setAccessibleName("Detailed explanation progress")
        self.btn_explain_cancel = QPushButton("Cancel")
        self.btn_explain_cancel.setToolTip("Stop the detailed explanation")
        er.addWidget(self.btn_explain)
        er.addWidget(self.explain_bar, 1)
        er.addWidget(self.btn_explain_cancel)
        er.addStretch(0)
        return self.explain_row


    def _build_legend(self) -> QWidget:
        """The heat map's caption and colour legend under the image."""
        self.legend_row = QWidget()
        leg = QHBoxLayout(self.legend_row)
        leg.setContentsMargins(0, 0, 0, 0)
        self.cam_caption = QLabel("")
        self.cam_caption.setObjectName("Muted")
        self.cam_caption.setWordWrap(True)  # a long caption must never widen the image column
        self.cam_caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.cam_caption.setTextFormat(Qt.TextFormat.AutoText)  # rich only for the "recompute" link
        self.cam_caption.linkActivated.connect(self._caption_link)
        self.legend = ColormapLegend()
        self.legend.set_colormap(self.settings.colormap)
        leg.addWidget(self.cam_caption, 1)
        leg.addWidget(self.legend, 1)
        return self.legend_row


    def _build_meta_card(self) -> QWidget:
        """Age, sex and body site: changing one re-scores the case."""
        self.meta_card = QFrame()
        self.meta_card.setObjectName("Card")
        mg = QGridLayout(self.meta_card)
        mg.setContentsMargins(10, 6, 10, 6)
        mg.setHorizontalSpacing(8)
        mg.setVerticalSpacing(4)
        mt = QLabel("Patient details (optional)")
        mt.setObjectName("CardTitle")
        mnote = QLabel("changing one re-scores the case at once")
        mnote.setObjectName("Muted")
        self.age = QSpinBox()
        self.age.setRange(-1, 120)
        self.age.setSpecialValueText("Not given")
        self.age.setSuffix(" years")
        self.age.setValue(-1)
        self.age.setToolTip("Age in years; changing it re-scores the case")
        self.sex = QComboBox()
        self.site = QComboBox()
        self.sex.setToolTip("Sex, in the model's categories; changing it re-scores the case")
        self.site.setToolTip("Body site, in the model's five categories; changing it re-scores the case")
        for combo in (self.sex, self.site):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.sex.setMinimumContentsLength(8)
        self.site.setMinimumContentsLength(14)
        self._meta_grid, self._meta_title, self._meta_note = mg, mt, mnote
        self._meta_labels = []
        for lab, w in (("Age", self.age), ("Sex", self.sex), ("Body site", self.site)):
            lb = QLabel(lab + ":")
            lb.setBuddy(w)
            self._meta_labels.append(lb)
        self._meta_compact: bool | None = None
        self._layout_meta(compact=False)
        return self.meta_card

    def _build_details(self) -> QScrollArea:
        """The right column: error, assessment, warnings, class probabilities and skin type cards."""
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setMinimumWidth(330)
        panel = QWidget()
        panel.setObjectName("DetailsPanel")
        pl = QVBoxLayout(panel)
        pl.setContentsMargins(4, 8, 8, 8)
        pl.setSpacing(8)

        self.error_card = Card("Could not assess this file")
        self.error_text = _wrap_label("ErrorText")
        self.error_card.lay.addWidget(self.error_text)
        pl.addWidget(self.error_card)

        self.assess_card = Card("Assessment")
        self.gauge = RiskGauge()
        self.summary = _wrap_label()
        self.assess_card.lay.addWidget(self.gauge)
        self.assess_card.lay.addWidget(self.summary)
        pl.addWidget(self.assess_card)

        # the skin type (and its V-VI caution) sits right under the score: at 1024x640 it stays in view
        self.skin_card = Card("Skin type (Fitzpatrick)")
        self.skin_head = _wrap_label("SkinHead")
        self.skin_detail = _wrap_label("Muted")
        self.fst_combo = QComboBox()
        self.fst_combo.addItem("Use the estimate", None)
        for t in FST_TYPES:
            self.fst_combo.addItem(text.FST_DESCRIPTIONS[t], t)
        self.fst_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.fst_combo.setMinimumContentsLength(14)
        self.fst_combo.setToolTip("Set the skin type yourself; it is stored with the case and used in reports.")
        row = QFormLayout()
        row.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        row.addRow("Override:", self.fst_combo)
        self.skin_card.lay.addWidget(self.skin_head)
        self.skin_card.lay.addWidget(self.skin_detail)
        self.skin_card.lay.addLayout(row)
        pl.addWidget(self.skin_card)

        self.warn_card = Card("Warnings")
        self.warn_card.setObjectName("WarnCard")
        self.warn_text = _wrap_label("WarnText")
        self.warn_card.lay.addWidget(self.warn_text)
        pl.addWidget(self.warn_card)

        self.prob_card = Card("Class probabilities")
        self.bars = ProbabilityBars()
        self.prob_card.lay.addWidget(self.bars)
        pl.addWidget(self.prob_card)


        self.details = CaseDetailsCard()
        pl.addWidget(self.details)
        self.followup = FollowUpCard()
        pl.addWidget(self.followup)

        pl.addStretch(1)
        scroll.setWidget(panel)
        return scroll

    def _wire(self) -> None:
        """Connect the controls to their handlers and apply the stored overlay settings."""
        self.overlay_box.toggled.connect(self._overlay_toggled)
        self.opacity.valueChanged.connect(self._opacity_changed)
        self.colormap.currentTextChanged.connect(self._colormap_changed)
        self.mode.currentTextChanged.connect(self._mode_changed)
        self.btn_explain.clicked.connect(self.request_explain)
        self.btn_explain_cancel.clicked.connect(self._cancel_explain)
        self.btn_in.clicked.connect(lambda: self.view.zoom_by(1.25))
        self.btn_out.clicked.connect(lambda: self.view.zoom_by(0.8))
        self.btn_fit.clicked.connect(self.view.fit)
        self.btn_100.clicked.connect(self.view.actual_size)
        self.age.valueChanged.connect(self._meta_changed)
        self.sex.currentIndexChanged.connect(self._meta_changed)
        self.site.currentIndexChanged.connect(self._meta_changed)
        self.fst_combo.currentIndexChanged.connect(self._fst_changed)
        self.view.set_opacity(self.settings.opacity)
        self.view.set_colormap(self.settings.colormap)
        self.view.set_overlay_visible(self.settings.show_overlay)


    def _layout_meta(self, compact: bool) -> None:
        """One row of fields when there is room, two rows in a narrow window."""
        if compact == self._meta_compact:
            return
        self._meta_compact = compact
        mg = self._meta_grid
        for w in (self._meta_title, self._meta_note, *self._meta_labels, self.age, self.sex, self.site):
            mg.removeWidget(w)
        for c in range(6):
            mg.setColumnStretch(c, 0)
        la, ls, lsite = self._meta_labels
        if compact:
            mg.addWidget(self._meta_title, 0, 0, 1, 4)
            mg.addWidget(la, 1, 0)
            mg.addWidget(self.age, 1, 1)
            mg.addWidget(ls, 1, 2)
            mg.addWidget(self.sex, 1, 3)
            mg.addWidget(lsite, 2, 0)
            mg.addWidget(self.site, 2, 1, 1, 3)
            mg.setColumnStretch(3, 1)
            self._meta_note.hide()
            self.meta_card.setToolTip("Changing one of these re-scores the case at once.")
        else:
            mg.addWidget(self._meta_title, 0, 0, 1, 4)
            mg.addWidget(self._meta_note, 0, 4, 1, 2, Qt.AlignmentFlag.AlignRight)
            for col, (lb, w) in enumerate(zip(self._meta_labels, (self.age, self.sex, self.site))):
                mg.addWidget(lb, 1, 2 * col)
                mg.addWidget(w, 1, 2 * col + 1)
            mg.setColumnStretch(5, 1)
            self._meta_note.show()
            self.meta_card.setToolTip("")

    def eventFilter(self, obj, event) -> bool:  # noqa: N802
        if obj is getattr(self, "_left", None) and event.type() == QEvent.Type.Resize:
            self._adapt()
        return super().eventFilter(obj, event)

    def _adapt(self) -> None:
        w = self._left.width() if hasattr(self, "_left") else self.width()
        self._layout_meta(compact=w < COMPACT_META_WIDTH)
        narrow = w < NARROW_TOOLS_WIDTH
        self.op_label.setVisible(not narrow)  # the slider keeps its tooltip and accessible name
        self.opacity.setMinimumWidth(NARROW_SLIDER_WIDTH if narrow else SLIDER_WIDTH)
        # never clip the switch's or the combos' text: below this width the zoom buttons go (Ctrl++/-/0, the
        # mouse wheel and a double-click still zoom and fit) and the colour scale combo (Settings has it)
        very_narrow = w < VERY_NARROW_TOOLS_WIDTH
        for b in (self.btn_in, self.btn_out, self.btn_100):
            b.setVisible(not very_narrow)
        self.colormap.setVisible(not very_narrow)
        for wdg in (self.overlay_box, self.mode):
            wdg.setMinimumWidth(wdg.sizeHint().width())

    def _tool(self, label: str, tip: str) -> QToolButton:
        b = QToolButton()
        b.setText(label)
        b.setToolTip(tip)
        b.setMinimumWidth(34)
        return b

    def set_categories(self, sexes, sites) -> None:
        """Metadata choices from the model card (falls back to core's categories)."""
        self._sexes, self._sites = tuple(sexes), tuple(sites)
        with signals_blocked(self.sex, self.site):
            self.sex.clear()
            for s in self._sexes:
                self.sex.addItem(text.SEX_LABELS.get(s, s), s)
            self.site.clear()
            for s in self._sites:
                self.site.addItem(text.SITE_LABELS.get(s, s), s)
        if self.case is not None:
            self._load_metadata(self.case.metadata)

    # ---- overlay controls ---------------------------------------------------------------------
    def toggle_overlay(self) -> None:
        self.overlay_box.toggle()

    def _overlay_toggled(self, on: bool) -> None:
        self.view.set_overlay_visible(on)
        self.legend.setVisible(on)  # the colour legend and caption describe the map: hidden with it
        self.cam_caption.setVisible(on)
        self.opacity.setEnabled(on)
        self.colormap.setEnabled(on)
        self.mode.setEnabled(on and self.case is not None and self.case.occlusion is not None)
        if self.settings.show_overlay != on:
            self.settings.show_overlay = on

    def _mode_changed(self, name: str) -> None:
        if not name or self.case is None or self.mode.signalsBlocked():
            return
        self._mode = name
        self._show_overlay(self.case)

    def set_mode(self, name: str) -> None:
        """Switch the heat map between "Grad-CAM" and "Occlusion" (if the case has an occlusion map)."""
        if name not in self.MODES:
            raise ValueError(f"unknown overlay mode {name!r}")
        self._mode = name
        if self.case is not None:
            self._show_overlay(self.case)

    @property
    def overlay_mode(self) -> str:
        """The heat map on screen now: "Grad-CAM" or "Occlusion"."""
        return self.mode.currentText()

    def can_explain(self, case: Case | None = None) -> bool:
        case = case if case is not None else self.case
        return (case is not None and case.status == "done" and case.x is not None
                and case.occlusion_progress is None)

    def request_explain(self) -> None:
        if self.can_explain():
            self.explainRequested.emit(self.case)

    def _cancel_explain(self) -> None:
        if self.case is not None and self.case.occlusion_progress is not None:
            self.explainCancelRequested.emit(self.case)

    def _show_overlay(self, case: Case) -> None:
        """Grad-CAM or occlusion map on the image, mode combo and caption to match."""
        pred = case.prediction
        occl = case.occlusion is not None and case.status != "error"
        effective = "Occlusion" if occl and self._mode == "Occlusion" else "Grad-CAM"
        with signals_blocked(self.mode):
            self.mode.setCurrentText(effective)
        self.mode.setEnabled(occl and self.overlay_box.isChecked())
        self.mode.setToolTip("Heat map shown: Grad-CAM or occlusion sensitivity" if occl else
                             "Run \u201cDetailed explanation\u201d to add the occlusion-sensitivity map")
        if effective == "Occlusion":
            self.view.set_cam(case.occlusion)
            note = self.outside_note(case, case.occlusion)
            self.cam_caption.setText("Occlusion sensitivity of the malignancy score"
                                     + (" · ⚠ mostly off the lesion" if note else ""))
            self.cam_caption.setToolTip("How much hiding each region (the image's mean colour over a sliding "
                                        "patch) changes the malignancy score, whatever the direction"
                                        + (f"; {case.occlusion_info}" if case.occlusion_info else "")
                                        + (f". {note[:1].upper() + note[1:]}." if note else ""))
        else:
            self.cam_caption.setToolTip("")
            cam = pred.cam if pred is not None else None
            flat = cam is not None and not float(np.max(cam)) > 0.0
            self.view.set_cam(None if flat else cam)  # an all-zero map would tint the whole image one colour
            if pred is None:
                self.cam_caption.setText("")
            elif case.result_is_stale:
                self.cam_caption.setText(self.stale_caption(case))
                self.cam_caption.setToolTip("Age, sex or body site changed after this score and its heat map were "
                                            "computed; they do not reflect the new details yet.")
            else:
                target = pred.cam_target or pred.top_class
                caption = (f"Grad-CAM for {text.class_label(target)}" if target != "malignancy"
                           else "Grad-CAM for the malignancy score")
                if flat:
                    self.cam_caption.setText(caption + " · flat: no region raises it")
                    self.cam_caption.setToolTip("Grad-CAM found no region that pushes this score up (every "
                                                "region's contribution is zero or negative), so there is no map "
                                                "to show.")
                else:
                    note = self.outside_note(case, pred.cam)
                    self.cam_caption.setText(caption + (" · ⚠ mostly off the lesion" if note else ""))
                    self.cam_caption.setToolTip(note[:1].upper() + note[1:] + "." if note else "")
        self.view.set_overlay_visible(self.overlay_box.isChecked())

    @staticmethod
    def stale_caption(case: Case) -> str:
        """The caption of a result computed before the metadata change (re-scoring, or it failed)."""
        if case.status in ("queued", "scoring"):
            return "⚠ Map and score computed before the metadata change · updating…"
        if case.x is None and case.path is None:
            return "⚠ Map and score computed before the metadata change (no image left to recompute them)"
        return ("⚠ Map and score computed before the metadata change · "
                "<a href='recompute'>recompute</a>")

    def _caption_link(self, href: str) -> None:
        if href == "recompute" and self.case is not None:
            self.recomputeRequested.emit(self.case)

    #: Below this share of the map's mass inside the lesion, the caption says the map looks elsewhere.
    INSIDE_MIN = 0.5

    def outside_note(self, case: Case, cam) -> str:
        """"" when the map sits mostly on the lesion, else a plain note (cached per map)."""
        if cam is None or case.x is None:
            return ""
        key = id(cam)
        cached = getattr(case, "_outside_note", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        from mendicant_desktop.core.explain import saliency_in_lesion

        note = ""
        try:
            s = saliency_in_lesion(cam, case.x)
        except ValueError:
            s = None
        if s is not None and s.ok and s.ratio < self.INSIDE_MIN:
            where = "the black background" if s.mask_kind == "masked-crop" else "the skin around it"
            note = (f"only {s.ratio:.0%} of the map lies on the lesion; the rest falls on {where}, so it does not "
                    "show what the score rests on")
        case._outside_note = (key, note)
        return note

    def show_explain_state(self, case: Case) -> None:
        """Button or progress bar + Cancel, for the case on screen."""
        if case is not self.case:
            return
        running = case.occlusion_progress is not None
        self.explain_row.setVisible(case.status != "error")
        self.btn_explain.setVisible(not running)
        self.btn_explain.setEnabled(self.can_explain(case))
        self.btn_explain.setText("Recompute detailed explanation…" if case.occlusion is not None
                                 else "Detailed explanation…")
        self.explain_bar.setVisible(running)
        self.btn_explain_cancel.setVisible(running)
        if running:
            done, total = case.occlusion_progress
            self.explain_bar.setRange(0, max(total, 0))
            self.explain_bar.setValue(min(done, total) if total else 0)

    def _opacity_changed(self, v: int) -> None:
        self.view.set_opacity(v / 100.0)
        self.settings.opacity = v / 100.0

    def _colormap_changed(self, name: str) -> None:
        if name:
            self.view.set_colormap(name)
            self.legend.set_colormap(name)
            if self.settings.colormap != name:
                self.settings.colormap = name

    def apply_settings(self) -> None:
        """Settings changed elsewhere (the dialog): mirror them."""
        with signals_blocked(self.opacity, self.colormap, self.overlay_box):
            self.opacity.setValue(round(self.settings.opacity * 100))
            self.colormap.setCurrentText(self.settings.colormap)
            self.overlay_box.setChecked(self.settings.show_overlay)
        self.view.set_opacity(self.settings.opacity)
        self.view.set_colormap(self.settings.colormap)
        self.legend.set_colormap(self.settings.colormap)
        self.view.set_overlay_visible(self.settings.show_overlay)
        if self.case is not None:
            self._show_skin(self.case)

    # ---- edits --------------------------------------------------------------------------------
    def current_metadata(self) -> Metadata:
        age = self.age.value()
        return Metadata(age=None if age < 0 else float(age), sex=self.sex.currentData() or "unknown",
                        site=self.site.currentData() or "unknown")

    def _meta_changed(self, *_):
        if self.case is None or self.case.status == "error":
            return
        meta = self.current_metadata()
        if meta != self.case.metadata:
            self.metadataEdited.emit(self.case, meta)

    def _fst_changed(self, *_):
        if self.case is None:
            return
        value = self.fst_combo.currentData()
        if value != self.case.fst_override:
            self.fstOverrideEdited.emit(self.case, value)

    def _load_metadata(self, meta: Metadata) -> None:
        with signals_blocked(self.age, self.sex, self.site):
            self.age.setValue(-1 if meta.age is None else round(meta.age))
            i = self.sex.findData(meta.sex)
            self.sex.setCurrentIndex(i if i >= 0 else self.sex.findData("unknown"))
            i = self.site.findData(meta.site)
            self.site.setCurrentIndex(i if i >= 0 else self.site.findData("unknown"))

    # ---- display ------------------------------------------------------------------------------
    def show_case(self, case: Case | None, *, image_changed: bool = True) -> None:
        same = case is not None and case is self.case
        self.case = case
        self.details.show_case(case)
        self.followup.show_case(case)
        if case is None:
            self.title.setText("No case selected")
            self.status.setText("")
            self.view.set_image(None)
            for c in (self.error_card, self.assess_card, self.warn_card, self.prob_card, self.skin_card,
                      self.meta_card):
                c.setVisible(False)
            self.cam_caption.setText("")
            self.image_tools.setVisible(False)
            self.legend_row.setVisible(False)
            self.explain_row.setVisible(False)
            return
        self.title.setText(case.name)
        self.title.set_extra_tooltip(case.source)
        self.status.setText(case.status.upper())
        self.status.setProperty("status", case.status)
        self.status.style().unpolish(self.status)
        self.status.style().polish(self.status)
        err = case.status == "error"
        self.error_card.setVisible(err)
        self.error_text.setText(f"<b>{case.source}</b><br>{case.error}<br><br>The file was not scored. "
                                f"Check that it is a complete {formats_text()} image." if err else "")
        for c in (self.assess_card, self.prob_card, self.skin_card, self.meta_card):
            c.setVisible(not err)
        self.image_tools.setVisible(not err)
        self.legend_row.setVisible(not err)
        self.legend.setVisible(self.overlay_box.isChecked())
        self.cam_caption.setVisible(self.overlay_box.isChecked())
        self.view.set_placeholder("This file could not be read, so there is no image to show." if err
                                  else "Loading the image…")
        if image_changed or not same:
            img = (case.display_qimage if case.display_qimage is not None
                   else case.display if case.display is not None else case.thumb)
            self.view.set_image(img, keep_view=same)
        pred = case.prediction
        self._show_overlay(case)
        self.show_explain_state(case)
        self._load_metadata(case.metadata)
        with signals_blocked(self.fst_combo):
            i = self.fst_combo.findData(case.fst_override)
            self.fst_combo.setCurrentIndex(max(0, i))
        if pred is None:
            self.gauge.set_value(None, 0.5, None)
            self.bars.clear()
            self.summary.setText("Scoring…" if case.status in ("queued", "scoring") else "")
        else:
            self.gauge.set_value(pred.malignancy, pred.threshold, pred.risk)
            self.bars.set_probabilities(pred.class_names, pred.probabilities)
            stale = (" (Computed before the metadata change: " + ("updating.)" if case.status in ("queued", "scoring")
                     else "use “recompute” under the image.)")) if case.result_is_stale else ""
            default = self.gauge.model_default
            source = self.settings.threshold_source(default) if default is not None else ""
            self.summary.setText(text.summary(pred, case.warnings, default, source) + stale)
        self.warn_card.setVisible(bool(case.warnings) and not err)
        self.warn_text.setText("<br>".join(f"⚠ {w}" for w in case.warnings))
        self._show_skin(case)
        self.meta_card.setEnabled(case.status in ("done", "scoring", "queued"))
        if pred is not None and case.status == "done":
            self.resultShown.emit(case)

    def _show_skin(self, case: Case) -> None:
        head, detail = text.skin_text(case.skin, case.fst_override, self.settings.estimate_fst)
        self.skin_head.setText(f"<b>{head}</b>")
        self.skin_detail.setText(detail)
        self.skin_detail.setVisible(bool(detail))
