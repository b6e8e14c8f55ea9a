"""Cases of the session: the record (:class:`Case`), the list model and its row delegate."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QAbstractListModel, QModelIndex, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QStyle, QStyledItemDelegate, QStyleOptionViewItem

from mendicant_desktop.app.assessment import Assessment, Failure
from mendicant_desktop.app.quality import fst_caution
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.results import CLASS_FULL_NAMES, Prediction, SkinToneEstimate

from .qtutil import ERROR, INK, MUTED, STATUS_COLOURS, rgb_to_qimage, risk_colour
from .text import pct

STATUSES = ("queued", "scoring", "done", "error")
_ids = itertools.count(1)


@dataclass(eq=False)
class Case:
    """One image and everything known about it. Lives on the GUI thread only."""

    source: str  # the path as given, or "Pasted image N"
    path: Path | None
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "queued"
    error: str = ""
    metadata: Metadata = field(default_factory=Metadata)
    x: np.ndarray | None = field(default=None, repr=False)
    display: np.ndarray | None = field(default=None, repr=False)
    display_qimage: QImage | None = field(default=None, repr=False)  # the same pixels, ready for Qt
    thumb: np.ndarray | None = field(default=None, repr=False)
    pending_bytes: bytes | None = field(default=None, repr=False)  # pasted image data until scored
    width: int = 0
    height: int = 0
    sha256: str = ""
    prediction: Prediction | None = None
    # the metadata ``prediction`` (and its heat map) was computed with: differs from ``metadata`` while a re-score
    # for edited metadata runs, or when it failed (the view then says the map predates the change)
    scored_metadata: Metadata | None = None
    # the app layer's result (its preview dropped: ``display`` holds it, and may be released)
    assessment: Assessment | None = field(default=None, repr=False)
    skin: SkinToneEstimate | None = None
    fst_override: str | None = None
    image_warnings: list[str] = field(default_factory=list)
    domain_warnings: list[str] = field(default_factory=list)
    added: datetime = field(default_factory=datetime.now)
    scored: datetime | None = None
    # "Detailed explanation": occlusion size-of-change map of the malignancy score, normalised to [0, 1]
    # (model-input frame); dropped when the metadata changes or the case is re-scored.
    occlusion: np.ndarray | None = field(default=None, repr=False)
    occlusion_info: str = ""
    occlusion_progress: tuple[int, int] | None = None  # (done, total) while one is running, else None
    # -- the case store (see gui/keeper.py): ids written by the store's worker, the rest by the GUI thread
    title: str = ""  # the name shown (a restored case: the original file name; its path is the kept copy)
    visit_id: int | None = None
    lesion_id: int | None = None
    patient_code: str = ""
    patient_name: str = ""  # only with "Record patient names" in Settings
    birth_date: str = ""
    lesion_label: str = ""
    lesion_choice: object = None  # "new" or a lesion id: applied (and cleared) by the next save
    notes: str = ""
    visit_date: str = ""  # ISO date of the visit (default: the day it was scored)
    restored: bool = False  # loaded from the store at start-up (no model input or heat map until re-read)
    saving: bool = False  # a save is running
    needs_save: bool = False  # changed while a save was running: saved again when it ends
    removed: bool = False
    save_error: str = ""
    _pixmap: QPixmap | None = field(default=None, repr=False)

    @property
    def unsaved(self) -> bool:
        """Not (yet) all in the case store: still being scored or written, or the last save failed."""
        return (self.status in ("queued", "scoring") or self.saving or self.needs_save or bool(self.save_error)
                or self.visit_id is None)

    @property
    def result_is_stale(self) -> bool:
        """The result on screen was computed with other metadata than the case now has."""
        return (self.prediction is not None and self.scored_metadata is not None
                and self.scored_metadata != self.metadata)

    @property
    def warnings(self) -> list[str]:
        """Image and domain warnings, and the V–VI caution when the skin type used (override, else estimate)
        is V or VI."""
        caution = fst_caution(self.fst)
        return self.image_warnings + self.domain_warnings + ([caution] if caution else [])

    @property
    def name(self) -> str:
        if self.title:
            return self.title
        return self.path.name if self.path is not None else self.source

    @property
    def fst(self) -> str:
        """The skin type used for this case: the clinician's override, else the estimate, else 'unknown'."""
        if self.fst_override:
            return self.fst_override
        return self.skin.fst if self.skin is not None else "unknown"

    @property
    def fst_source(self) -> str:
        if self.fst_override:
            return "clinician"
        return "estimated" if self.skin is not None and self.skin.known else "unknown"

    def set_assessment(self, a: Assessment) -> None:
        """Take a fresh assessment of the image: pixels, hash, skin tone, warnings and prediction."""
        self.assessment = dataclasses.replace(a, preview=None)
        self.x, self.display, self.width, self.height, self.sha256 = a.x, a.preview, a.width, a.height, a.sha256
        self.skin = a.skin
        self.image_warnings, self.domain_warnings = list(a.image_warnings), list(a.domain_warnings)
        self.prediction = a.prediction
        self.scored_metadata = a.metadata or Metadata()

    def set_failure(self, f: Failure) -> None:
        """The image could not be assessed: an error case with the reason (and its sha256 if it was read)."""
        self.status, self.error = "error", f.reason
        self.sha256 = f.sha256 or ""
        self.pending_bytes = None

    def set_rescored(self, a: Assessment) -> None:
        """Take a re-score of the same image (other metadata): the prediction and its domain warnings."""
        self.assessment = dataclasses.replace(a, preview=None)
        self.prediction = a.prediction
        self.scored_metadata = a.metadata or Metadata()
        self.domain_warnings = list(a.domain_warnings)

    def clear_occlusion(self) -> None:
        self.occlusion = None
        self.occlusion_info = ""

    def thumbnail(self) -> QPixmap | None:
        if self._pixmap is None and self.thumb is not None:
            self._pixmap = QPixmap.fromImage(rgb_to_qimage(self.thumb))
        return self._pixmap

    def set_thumb(self, thumb: np.ndarray | None) -> None:
        self.thumb = thumb
        self._pixmap = None


CaseRole = Qt.ItemDataRole.UserRole + 1


class CaseListModel(QAbstractListModel):
    """The session's cases in the order they were added."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._cases: list[Case] = []
        #: Shown on queued cases when the model failed to load or verify ("" while it loads or is ready).
        self.not_scored_reason = ""

    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802, B008
        return 0 if parent.isValid() else len(self._cases)

    def data(self, index: QModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._cases):
            return None
        c = self._cases[index.row()]
        if role == CaseRole:
            return c
        if role == Qt.ItemDataRole.DisplayRole:
            return c.name
        if role == Qt.ItemDataRole.ToolTipRole:
            tip = [c.source, f"Status: {c.status}"]
            if c.status == "queued" and self.not_scored_reason:
                tip.append(self.not_scored_reason)
            if c.error:
                tip.append(f"Error: {c.error}")
            if c.prediction is not None:
                p = c.prediction
                tip.append(f"Top class: {CLASS_FULL_NAMES.get(p.top_class, p.top_class)} ({p.top_class})")
                tip.append(f"Malignancy {pct(p.malignancy)} — {p.risk.upper()} band (threshold {pct(p.threshold)})")
            tip += [f"⚠ {w}" for w in c.warnings]
            return "\n".join(tip)
        if role == Qt.ItemDataRole.AccessibleTextRole:
            return f"{c.name}, {c.status}"
        return None

    # -- mutation -------------------------------------------------------------------------------
    @property
    def cases(self) -> list[Case]:
        return list(self._cases)

    def add(self, cases: list[Case]) -> None:
        if not cases:
            return
        n = len(self._cases)
        self.beginInsertRows(QModelIndex(), n, n + len(cases) - 1)
        self._cases.extend(cases)
        self.endInsertRows()

    def row_of(self, case: Case) -> int:
        for i, c in enumerate(self._cases):
            if c is case:
                return i
        return -1

    def case_at(self, row: int) -> Case | None:
        return self._cases[row] if 0 <= row < len(self._cases) else None

    def refresh(self, case: Case) -> None:
        r = self.row_of(case)
        if r >= 0:
            ix = self.index(r)
            self.dataChanged.emit(ix, ix)

    def refresh_all(self) -> None:
        if self._cases:
            self.dataChanged.emit(self.index(0), self.index(len(self._cases) - 1))

    def remove(self, case: Case) -> None:
        r = self.row_of(case)
        if r >= 0:
            self.beginRemoveRows(QModelIndex(), r, r)
            del self._cases[r]
            self.endRemoveRows()

    def clear(self) -> None:
        self.beginResetModel()
        self._cases.clear()
        self.endResetModel()


class CaseDelegate(QStyledItemDelegate):
    """Row: thumbnail | name / top class / status | risk badge."""

    THUMB = 56
    PAD = 8

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:  # noqa: N802
        fm = QFontMetrics(option.font)
        return QSize(240, max(self.THUMB, 3 * fm.height() + 6) + 2 * self.PAD)

    def paint(self, p: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        case: Case = index.data(CaseRole)
        if case is None:
            return
        p.save()
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = option.rect
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        p.fillRect(r, QColor("#dbe8f3") if selected else QColor("#ffffff"))
        p.setPen(QColor("#e3e8ee"))
        p.drawLine(r.bottomLeft(), r.bottomRight())
        if selected:
            p.fillRect(QRectF(r.x(), r.y(), 4, r.height()), QColor("#1f5f8b"))
        pad, th = self.PAD, self.THUMB
        tr = QRectF(r.x() + pad + 2, r.y() + (r.height() - th) / 2, th, th)
        pm = case.thumbnail()
        p.fillRect(tr, QColor("#20262e"))
        if pm is not None and not pm.isNull():
            s = pm.size().scaled(th, th, Qt.AspectRatioMode.KeepAspectRatio)
            target = QRectF(tr.x() + (th - s.width()) / 2, tr.y() + (th - s.height()) / 2, s.width(), s.height())
            p.drawPixmap(target.toRect(), pm)
        elif case.status == "error":
            p.setPen(ERROR)
            f = QFont(option.font)
            f.setPointSizeF(f.pointSizeF() * 1.8)
            f.setBold(True)
            p.setFont(f)
            p.drawText(tr, Qt.AlignmentFlag.AlignCenter, "!")
        fm = QFontMetrics(option.font)
        x = tr.right() + pad
        # badge on the right
        badge_w = 0
        pred = case.prediction
        if pred is not None and case.status == "done":
            bf = QFont(option.font)
            bf.setBold(True)
            bf.setPointSizeF(max(7.0, option.font.pointSizeF() * 0.9))
            bfm = QFontMetrics(bf)
            text = f"{'HIGH' if pred.risk == 'high' else 'LOW'} {pct(pred.malignancy)}"
            badge_w = bfm.horizontalAdvance(text) + 14
            br = QRectF(r.right() - pad - badge_w, r.y() + pad, badge_w, bfm.height() + 6)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(risk_colour(pred.risk))
            p.drawRoundedRect(br, br.height() / 2, br.height() / 2)
            p.setPen(QColor("white"))
            p.setFont(bf)
            p.drawText(br, Qt.AlignmentFlag.AlignCenter, text)
        text_w = max(20, r.right() - pad - x)
        name_w = max(20, text_w - badge_w - 6)
        bold = QFont(option.font)
        bold.setBold(True)
        p.setFont(bold)
        p.setPen(INK)
        y = r.y() + pad
        lh = fm.height() + 2
        p.drawText(QRectF(x, y, name_w, lh), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   QFontMetrics(bold).elidedText(case.name, Qt.TextElideMode.ElideRight, int(name_w)))
        p.setFont(option.font)
        if pred is not None:
            line2 = f"{CLASS_FULL_NAMES.get(pred.top_class, pred.top_class)} ({pred.top_class}) {pct(pred.top_k[0][1])}"
            p.setPen(INK)
        elif case.status == "error":
            line2 = case.error or "could not be read"
            p.setPen(ERROR)
        elif case.status == "queued" and getattr(index.model(), "not_scored_reason", ""):
            line2 = index.model().not_scored_reason
            p.setPen(ERROR)
        else:
            line2 = "waiting for the model…" if case.status == "queued" else "scoring…"
            p.setPen(MUTED)
        p.drawText(QRectF(x, y + lh, text_w, lh), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(line2, Qt.TextElideMode.ElideRight, int(text_w)))
        status = case.status
        if case.status == "done" and case.warnings:
            status += f" · ⚠ {len(case.warnings)} warning{'s' if len(case.warnings) > 1 else ''}"
        p.setPen(STATUS_COLOURS.get(case.status, MUTED))
        p.drawText(QRectF(x, y + 2 * lh, text_w, lh), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   fm.elidedText(status, Qt.TextElideMode.ElideRight, int(text_w)))
        p.restore()
