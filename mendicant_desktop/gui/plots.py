"""ROC and calibration plots drawn with QPainter.

QtCharts ships only in PySide6-Addons (not in PySide6-Essentials, our one Qt dependency) and pyqtgraph
would be a further package; two small line plots do not justify either. See docs/gui.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFontMetrics, QImage, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from mendicant_desktop.core import report_html

from .qtutil import GRID, INK, MUTED

#: Okabe-Ito colour-blind-safe palette, one colour per group (per type and DDI-style): the HTML report's colours.
GROUP_COLOURS = {name: QColor(hex_colour) for name, hex_colour in report_html.GROUP_COLOURS.items()}


@dataclass
class Series:
    name: str
    x: np.ndarray
    y: np.ndarray
    colour: QColor
    dashed: bool = False
    markers: bool = False
    sizes: np.ndarray | None = None  # marker area per point (calibration counts)


class LinePlot(QWidget):
    """A unit-square plot with axes, a diagonal reference line and a legend."""

    def __init__(self, title: str, xlabel: str, ylabel: str, diagonal_label: str = "",
                 parent: QWidget | None = None, ylabel_short: str = "") -> None:
        super().__init__(parent)
        self.title, self.xlabel, self.ylabel, self.diagonal_label = title, xlabel, ylabel, diagonal_label
        self.ylabel_short = ylabel_short or ylabel
        self.setToolTip(f"{title}: {xlabel} (across) against {ylabel} (up)")
        self.series: list[Series] = []
        self.note = ""
        self.setMinimumSize(280, 200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(420, 360)

    def set_series(self, series: list[Series], note: str = "") -> None:
        self.series = series
        self.note = note
        self.update()

    def render_image(self, w: int = 560, h: int = 440) -> QImage:
        """The plot as an image (for the HTML export); safe without showing the widget."""
        img = QImage(w, h, QImage.Format.Format_ARGB32)
        img.fill(QColor("white"))
        p = QPainter(img)
        self._paint(p, QRectF(0, 0, w, h))
        p.end()
        return img

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.fillRect(self.rect(), QColor("white"))
        self._paint(p, QRectF(self.rect()))
        p.end()

    def _paint(self, p: QPainter, r: QRectF) -> None:
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setFont(self.font())
        fm = QFontMetrics(self.font())
        lh = fm.height()
        left = r.left() + fm.horizontalAdvance("1.00") + lh + 12
        top = r.top() + lh + 10
        legend_w = max([fm.horizontalAdvance(s.name) for s in self.series] + [0]) + 34
        right = r.right() - 12 - (legend_w if self.series else 0)
        bottom = r.bottom() - 2 * lh - 12 - (lh if self.note else 0)
        side = max(40.0, min(right - left, bottom - top))
        plot = QRectF(left, top, side, side)
        # title
        bold = p.font()
        bold.setBold(True)
        p.setFont(bold)
        p.setPen(INK)
        p.drawText(QRectF(r.left(), r.top() + 2, r.width(), lh + 4), Qt.AlignmentFlag.AlignHCenter, self.title)
        p.setFont(self.font())
        # grid + ticks: a label on every line when they fit side by side, else on 0, 0.5 and 1 only
        every = 1 if plot.width() / 5 >= fm.horizontalAdvance("0.0") * 1.6 else 0
        for i in range(6):
            t = i / 5
            x = plot.left() + t * plot.width()
            y = plot.bottom() - t * plot.height()
            p.setPen(QPen(GRID, 1))
            p.drawLine(QPointF(x, plot.top()), QPointF(x, plot.bottom()))
            p.drawLine(QPointF(plot.left(), y), QPointF(plot.right(), y))
            p.setPen(MUTED)
            lab = f"{t:.1f}"
            if every or i in (0, 5):
                p.drawText(QPointF(x - fm.horizontalAdvance(lab) / 2, plot.bottom() + fm.ascent() + 3), lab)
            p.drawText(QPointF(plot.left() - fm.horizontalAdvance(lab) - 4, y + fm.ascent() / 2 - 1), lab)
        if not every:
            lab = "0.5"
            p.drawText(QPointF(plot.center().x() - fm.horizontalAdvance(lab) / 2, plot.bottom() + fm.ascent() + 3),
                       lab)
        p.setPen(QPen(INK, 1))
        p.drawRect(plot)
        # axis labels
        p.setPen(INK)
        tw = fm.horizontalAdvance(self.xlabel)
        tx = min(max(r.left() + 2, plot.center().x() - tw / 2), r.right() - tw - 2)
        p.drawText(QPointF(tx, plot.bottom() + lh + 4 + fm.ascent()), self.xlabel)
        p.save()
        p.translate(r.left() + 2, plot.center().y())
        p.rotate(-90)
        # the full label when it fits along the plot's side, else the short one (never clipped at the edges)
        ylabel = self.ylabel if fm.horizontalAdvance(self.ylabel) + 4 <= plot.height() else self.ylabel_short
        yw = max(plot.height(), fm.horizontalAdvance(ylabel) + 4)
        p.drawText(QRectF(-yw / 2, 0, yw, lh + 2), Qt.AlignmentFlag.AlignHCenter, ylabel)
        p.restore()
        if self.note:
            p.setPen(MUTED)
            p.drawText(QRectF(r.left() + 4, plot.bottom() + 2 * lh + 8, r.width() - 8, lh + 2),
                       Qt.AlignmentFlag.AlignLeft, fm.elidedText(self.note, Qt.TextElideMode.ElideRight, int(r.width() - 8)))
        # diagonal
        p.setPen(QPen(QColor("#8a94a0"), 1, Qt.PenStyle.DotLine))
        p.drawLine(QPointF(plot.left(), plot.bottom()), QPointF(plot.right(), plot.top()))

        def pt(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + x * plot.width(), plot.bottom() - y * plot.height())

        p.save()
        p.setClipRect(plot.adjusted(-4, -4, 4, 4))
        for s in self.series:
            ok = np.isfinite(s.x) & np.isfinite(s.y)
            xs, ys = s.x[ok], s.y[ok]
            if xs.size == 0:
                continue
            pen = QPen(s.colour, 2.2 if s.name.startswith("All") else 1.8)
            if s.dashed:
                pen.setStyle(Qt.PenStyle.DashLine)
            p.setPen(pen)
            path = QPainterPath(pt(xs[0], ys[0]))
            for x, y in zip(xs[1:], ys[1:]):
                path.lineTo(pt(x, y))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawPath(path)
            if s.markers:
                p.setBrush(s.colour)
                sizes = s.sizes[ok] if s.sizes is not None else np.full(xs.size, 16.0)
                for x, y, a in zip(xs, ys, sizes):
                    rad = max(2.0, min(7.0, math.sqrt(float(a)) / 1.5))
                    p.drawEllipse(pt(x, y), rad, rad)
        p.restore()
        # legend
        if self.series:
            lx = plot.right() + 14
            ly = plot.top()
            for s in self.series:
                pen = QPen(s.colour, 2.5)
                if s.dashed:
                    pen.setStyle(Qt.PenStyle.DashLine)
                p.setPen(pen)
                p.drawLine(QPointF(lx, ly + lh / 2), QPointF(lx + 20, ly + lh / 2))
                p.setPen(INK)
                p.drawText(QPointF(lx + 26, ly + fm.ascent()), s.name)
                ly += lh + 4
            if self.diagonal_label:
                p.setPen(QPen(QColor("#8a94a0"), 1, Qt.PenStyle.DotLine))
                p.drawLine(QPointF(lx, ly + lh / 2), QPointF(lx + 20, ly + lh / 2))
                p.setPen(MUTED)
                p.drawText(QPointF(lx + 26, ly + fm.ascent()), self.diagonal_label)


class RocPlot(LinePlot):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("ROC curves by skin type", "1 − specificity", "Sensitivity", "chance", parent)


class CalibrationPlot(LinePlot):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Calibration (10 bins)", "Mean predicted score", "Observed malignant rate", "perfect",
                         parent, ylabel_short="Observed rate")
