"""Lesion follow-up in the window: the malignancy score over the lesion's visits as a small plot (threshold
line, the change into the shown visit marked, a rise across the threshold flagged), and two visits side by
side. The arithmetic is :mod:`mendicant_desktop.app.followup`'s."""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPen, QPixmap
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop.app.followup import Change, VisitScore, change_into

from .cases import Case
from .qtutil import ACCENT, GRID, HIGH, INK, LOW, MUTED, rgb_to_qimage
from .text import pct


def visit_date(c: Case) -> str:
    return c.visit_date or (c.scored or c.added).date().isoformat()


def scored_visits(cases: list[Case]) -> list[Case]:
    """The scored visits of a lesion, by visit date."""
    return sorted((c for c in cases if c.prediction is not None and c.status == "done"), key=visit_date)


def visit_scores(cases: list[Case]) -> list[VisitScore]:
    return [VisitScore(visit_date(c), c.prediction.malignancy, c.name) for c in cases]


class TrendPlot(QWidget):
    """Malignancy score per visit (evenly spaced, dated), the threshold as a dashed line."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.points: list[VisitScore] = []
        self.threshold = 0.5
        self.current = -1
        self.change: Change | None = None
        self.setMinimumHeight(120)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAccessibleName("Malignancy score over the visits")

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(320, 130)

    def set_data(self, points: list[VisitScore], threshold: float, current: int, change: Change | None) -> None:
        self.points, self.threshold, self.current, self.change = points, threshold, current, change
        self.setToolTip("\n".join(f"{p.date}: {pct(p.malignancy)} ({p.label})" for p in points))
        self.update()

    def paintEvent(self, e) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = QFontMetrics(self.font())
        left, right, top, bottom = fm.horizontalAdvance("100%") + 8, 10, 8, fm.height() + 6
        r = QRectF(left, top, self.width() - left - right, self.height() - top - bottom)
        ymax = min(1.0, max(0.25, self.threshold * 1.6, *(v.malignancy * 1.15 for v in self.points)))
        n = len(self.points)

        def xy(i: int, v: float) -> QPointF:
            x = r.left() + (r.width() * (i / (n - 1)) if n > 1 else r.width() / 2)
            return QPointF(x, r.bottom() - r.height() * min(v, ymax) / ymax)

        p.setPen(QPen(GRID, 1))
        p.drawRect(r)
        p.setPen(MUTED)
        for v in (0.0, ymax):
            y = xy(0, v).y()
            p.drawText(QRectF(0, y - fm.height() / 2, left - 4, fm.height()),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, f"{100 * v:.0f}%")
        ty = xy(0, self.threshold).y()
        p.setPen(QPen(MUTED, 1, Qt.PenStyle.DashLine))
        p.drawLine(QPointF(r.left(), ty), QPointF(r.right(), ty))
        p.drawText(QRectF(r.left() + 4, ty - fm.height() - 1, r.width() - 8, fm.height()),
                   Qt.AlignmentFlag.AlignLeft, f"threshold {pct(self.threshold)}")
        if not n:
            return
        path = QPainterPath(xy(0, self.points[0].malignancy))
        for i, v in enumerate(self.points[1:], 1):
            path.lineTo(xy(i, v.malignancy))
        p.setPen(QPen(ACCENT, 2))
        p.drawPath(path)
        if self.change is not None and 0 < self.current < n:  # the change into the shown visit
            a, b = xy(self.current - 1, self.points[self.current - 1].malignancy), xy(
                self.current, self.points[self.current].malignancy)
            colour = HIGH if self.change.crossed_up else INK
            p.setPen(QPen(colour, 3))
            p.drawLine(a, b)
            d = 100 * self.change.delta
            lab = f"{'+' if d > 0 else ''}{d:.1f} pts"
            w = fm.horizontalAdvance(lab) + 6
            mid = QPointF((a.x() + b.x()) / 2, (a.y() + b.y()) / 2)
            box = QRectF(min(max(r.left(), mid.x() - w / 2), r.right() - w), max(r.top(), mid.y() - fm.height() - 4),
                         w, fm.height())
            p.fillRect(box, QColor(255, 255, 255, 220))
            p.setPen(colour)
            p.drawText(box, Qt.AlignmentFlag.AlignCenter, lab)
        for i, v in enumerate(self.points):
            c = xy(i, v.malignancy)
            p.setPen(QPen(QColor("white"), 1.5))
            p.setBrush(HIGH if v.malignancy >= self.threshold else LOW)
            rad = 5.5 if i == self.current else 4
            p.drawEllipse(c, rad, rad)
            p.setPen(INK if i == self.current else MUTED)
            lab = v.date[2:] if n > 4 else v.date
            w = fm.horizontalAdvance(lab)
            x = min(max(c.x() - w / 2, 0), self.width() - w)
            p.drawText(QRectF(x, r.bottom() + 3, w + 2, fm.height()), Qt.AlignmentFlag.AlignLeft, lab)


class FollowUpCard(QFrame):
    """Shown when the case's lesion has two or more scored visits."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("Card")
        #: ``visits_of(case)`` -> the cases of the same lesion; ``threshold()`` -> the threshold in use.
        self.visits_of: Callable[[Case], list[Case]] = lambda c: [c]
        self.threshold: Callable[[], float | None] = lambda: None
        self.case: Case | None = None
        self._visits: list[Case] = []
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 12)
        lay.setSpacing(6)
        self.title = QLabel("Follow-up")
        self.title.setObjectName("CardTitle")
        lay.addWidget(self.title)
        self.flag = QLabel("")
        self.flag.setObjectName("ErrorText")
        self.flag.setWordWrap(True)
        lay.addWidget(self.flag)
        self.plot = TrendPlot()
        lay.addWidget(self.plot)
        self.text = QLabel("")
        self.text.setWordWrap(True)
        self.text.setObjectName("Muted")
        lay.addWidget(self.text)
        self.compare_btn = QPushButton("Compare visits side by side…")
        self.compare_btn.clicked.connect(self.open_compare)
        lay.addWidget(self.compare_btn, 0, Qt.AlignmentFlag.AlignLeft)
        self.dialog: CompareDialog | None = None
        self.setVisible(False)

    def show_case(self, case: Case | None) -> None:
        self.case = case
        t = self.threshold()
        visits = scored_visits(self.visits_of(case)) if case is not None and case.lesion_id is not None else []
        if case is None or t is None or len(visits) < 2 or case not in visits:
            self.setVisible(False)
            return
        self._visits = visits
        scores = visit_scores(visits)
        i = visits.index(case)
        ch = change_into(scores, i, t) if i > 0 else change_into(scores, 1, t)
        self.title.setText(f"Follow-up: {case.lesion_label or f'lesion #{case.lesion_id}'} · {len(visits)} visits")
        self.plot.set_data(scores, t, i, ch)
        self.text.setText(ch.text(pct) if ch is not None else "")
        flagged = ch is not None and ch.crossed_up
        self.flag.setText("⚑ Rose across the threshold since the previous visit — review this lesion."
                          if flagged else "")
        self.flag.setVisible(flagged)
        self.setVisible(True)

    @property
    def flagged(self) -> bool:
        return self.flag.isVisible() and bool(self.flag.text())

    def open_compare(self) -> CompareDialog | None:
        if self.case is None or len(self._visits) < 2:
            return None
        self.dialog = CompareDialog(self._visits, self.case, self.threshold() or 0.5, self.window())
        self.dialog.show()
        return self.dialog


class CompareDialog(QDialog):
    """Two visits of a lesion side by side: image, date, score and band; either side can be another visit."""

    SIDE = 420

    def __init__(self, visits: list[Case], current: Case, threshold: float, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Compare visits — MENDICANT")
        self.visits, self.threshold = visits, threshold
        self._loading: set[int] = set()
        self._big: dict[int, object] = {}
        i = visits.index(current)
        grid = QGridLayout(self)
        self.pickers, self.images, self.captions = [], [], []
        for col, idx in enumerate((max(0, i - 1) if i > 0 else 0, i if i > 0 else 1)):
            pick = QComboBox()
            for c in visits:
                pick.addItem(f"{visit_date(c)} · {c.name}", c.id)
            pick.setCurrentIndex(idx)
            img = QLabel()
            img.setAlignment(Qt.AlignmentFlag.AlignCenter)
            img.setMinimumSize(260, 200)
            img.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
            cap = QLabel()
            cap.setWordWrap(True)
            grid.addWidget(pick, 0, col)
            grid.addWidget(img, 1, col)
            grid.addWidget(cap, 2, col)
            self.pickers.append(pick)
            self.images.append(img)
            self.captions.append(cap)
            pick.currentIndexChanged.connect(lambda _i, col=col: self._show(col))
        self.change = QLabel()
        self.change.setWordWrap(True)
        row = QHBoxLayout()
        row.addWidget(self.change, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        row.addWidget(buttons)
        grid.addLayout(row, 3, 0, 1, 2)
        for col in (0, 1):
            self._show(col)
        screen = self.screen().availableGeometry() if self.screen() is not None else None
        self.resize(min(2 * self.SIDE + 60, screen.width() - 40) if screen else 900,
                    min(self.SIDE + 160, screen.height() - 60) if screen else 580)

    def _load(self, c: Case, col: int) -> None:
        """Read the visit's image (the kept copy) in the background; the thumbnail stands in meanwhile."""
        from mendicant_desktop.app.images import downscale
        from mendicant_desktop.core.preprocess import load_image

        from .worker import BackgroundOp

        self._loading.add(c.id)
        path = c.path

        def ok(img) -> None:
            self._big[c.id] = img
            for k in (0, 1):
                if self.case_at(k) is c:
                    self._show(k)

        BackgroundOp(self, op=lambda ctx: downscale(load_image(path), 2 * self.SIDE), success=ok).failure(
            lambda e: None).run_in_background()

    def case_at(self, col: int) -> Case:
        return self.visits[self.pickers[col].currentIndex()]

    def _show(self, col: int) -> None:
        c = self.case_at(col)
        src = c.display if c.display is not None else self._big.get(c.id, c.thumb)
        if c.display is None and c.path is not None and c.id not in self._loading:
            self._load(c, col)
        if src is not None:
            pm = QPixmap.fromImage(rgb_to_qimage(src)).scaled(self.SIDE, self.SIDE, Qt.AspectRatioMode.KeepAspectRatio,
                                                              Qt.TransformationMode.SmoothTransformation)
            self.images[col].setPixmap(pm)
        else:
            self.images[col].setText("(image not available)")
        p = c.prediction
        band = "HIGH" if p.malignancy >= self.threshold else "LOW"
        self.captions[col].setText(f"<b>{visit_date(c)}</b> · {c.name}<br>Malignancy score <b>{pct(p.malignancy)}"
                                   f"</b> ({band} band) · top class {p.top_class}")
        a, b = sorted((self.case_at(0), self.case_at(1)), key=visit_date)
        if a is not b:
            ch = Change(*visit_scores([a, b]), self.threshold)
            colour = "#b3261e" if ch.crossed_up else "#1d2733"
            self.change.setText(f"<span style='color:{colour}'>{ch.text(pct)}</span>")


__all__ = ["CompareDialog", "FollowUpCard", "TrendPlot", "scored_visits", "visit_date", "visit_scores"]
