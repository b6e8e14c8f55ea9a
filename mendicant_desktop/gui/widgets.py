"""Custom widgets of the case view: image viewer with overlay, probability bars, risk gauge, legend, drop zone."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QBrush,
    QColor,
    QFont,
    QFontMetrics,
    QImage,
    QLinearGradient,
    QPainter,
    QPainterPath,
    QPen,
    QPixmap,
    QTransform,
    QWheelEvent,
)
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from mendicant_desktop.app.inputs import formats_text
from mendicant_desktop.core.results import CLASS_FULL_NAMES, MALIGNANT_CLASSES
from mendicant_desktop.core.saliency import colormap_lut, upsample_cam

from .qtutil import ACCENT, GRID, HIGH, INK, LOW, MUTED, rgb_to_qimage, rgba_to_qimage
from .text import pct, prob_text

OVERLAY_SIDE = 512  # the coloured heat map is built at this size and smoothly scaled by Qt


def heatmap_rgba(cam: np.ndarray, aspect_hw: tuple[int, int], colormap: str) -> np.ndarray:
    """Colourised heat map (RGBA, opaque) at <= OVERLAY_SIDE, same aspect as the image.

    Drawn over the image with opacity ``a`` this equals ``core.saliency.overlay(image, cam, alpha=a)``.
    """
    h, w = aspect_hw
    s = OVERLAY_SIDE / max(h, w)
    size = (max(2, round(h * s)), max(2, round(w * s)))
    up = upsample_cam(np.asarray(cam, dtype=np.float32), size)
    lut = colormap_lut(colormap)
    rgb = lut[np.clip(np.round(up * 255), 0, 255).astype(np.uint8)]
    alpha = np.full(rgb.shape[:2] + (1,), 255, np.uint8)
    return np.concatenate([rgb, alpha], axis=2)


class ImageView(QGraphicsView):
    """Image with an optional heat-map layer: wheel to zoom, drag to pan, fit to window."""

    zoomChanged = Signal(float)

    MIN_ZOOM, MAX_ZOOM = 0.02, 16.0

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setScene(QGraphicsScene(self))
        self.setAcceptDrops(False)  # drops go to the main window
        self.setRenderHints(QPainter.RenderHint.SmoothPixmapTransform | QPainter.RenderHint.Antialiasing)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setBackgroundBrush(QColor("#20262e"))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setMinimumSize(320, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self._base = QGraphicsPixmapItem()
        self._base.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._overlay = QGraphicsPixmapItem()
        self._overlay.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._overlay.setZValue(1)
        self.scene().addItem(self._base)
        self.scene().addItem(self._overlay)
        self._fit_mode = True
        self._image_size = QSize()
        self._cam: np.ndarray | None = None
        self._colormap = "jet"
        self._opacity = 0.45
        self._overlay_on = True
        self._placeholder = ""
        self.setToolTip("Scroll to zoom, drag to pan, double-click to fit to the window.")

    def set_placeholder(self, text: str) -> None:
        """Text shown centred when there is no image (e.g. a file that could not be read)."""
        self._placeholder = text
        self.viewport().update()

    def drawForeground(self, painter: QPainter, rect) -> None:  # noqa: N802
        if self._placeholder and self._image_size.isEmpty():
            painter.save()
            painter.resetTransform()
            painter.setPen(QColor("#c9d1da"))
            painter.drawText(self.viewport().rect().adjusted(20, 20, -20, -20),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._placeholder)
            painter.restore()

    # -- content --------------------------------------------------------------------------------
    def set_image(self, rgb: np.ndarray | QImage | None, *, keep_view: bool = False) -> None:
        """Show an RGB array or a ready QImage (prepared on a worker thread: cheaper on the GUI thread)."""
        if rgb is None:
            self._base.setPixmap(QPixmap())
            self._overlay.setPixmap(QPixmap())
            self._image_size = QSize()
            self._cam = None
            return
        pm = QPixmap.fromImage(rgb if isinstance(rgb, QImage) else rgb_to_qimage(rgb))
        self._base.setPixmap(pm)
        self._image_size = pm.size()
        self.scene().setSceneRect(QRectF(0, 0, pm.width(), pm.height()))
        self._place_overlay()
        if not keep_view or self._fit_mode:
            self.fit()

    def set_cam(self, cam: np.ndarray | None) -> None:
        self._cam = None if cam is None else np.asarray(cam, dtype=np.float32)
        self._rebuild_overlay()

    def set_colormap(self, name: str) -> None:
        if name != self._colormap:
            self._colormap = name
            self._rebuild_overlay()

    def set_opacity(self, value: float) -> None:
        self._opacity = float(value)
        self._overlay.setOpacity(self._opacity)

    def set_overlay_visible(self, on: bool) -> None:
        self._overlay_on = bool(on)
        self._overlay.setVisible(self._overlay_on and self._cam is not None)

    def overlay_visible(self) -> bool:
        return self._overlay.isVisible()

    def has_image(self) -> bool:
        return not self._image_size.isEmpty()

    def _rebuild_overlay(self) -> None:
        if self._cam is None or self._image_size.isEmpty():
            self._overlay.setPixmap(QPixmap())
            self._overlay.setVisible(False)
            return
        rgba = heatmap_rgba(self._cam, (self._image_size.height(), self._image_size.width()), self._colormap)
        self._overlay.setPixmap(QPixmap.fromImage(rgba_to_qimage(rgba)))
        self._overlay.setOpacity(self._opacity)
        self._place_overlay()
        self._overlay.setVisible(self._overlay_on)

    def _place_overlay(self) -> None:
        pm = self._overlay.pixmap()
        if pm.isNull() or self._image_size.isEmpty():
            return
        self._overlay.setTransform(QTransform.fromScale(
            self._image_size.width() / pm.width(), self._image_size.height() / pm.height()))

    # -- zoom and pan ---------------------------------------------------------------------------
    def zoom(self) -> float:
        return self.transform().m11()

    def fit(self) -> None:
        self._fit_mode = True
        if not self._image_size.isEmpty():
            self.fitInView(self._base, Qt.AspectRatioMode.KeepAspectRatio)
        self.zoomChanged.emit(self.zoom())

    def zoom_by(self, factor: float) -> None:
        z = self.zoom()
        target = min(self.MAX_ZOOM, max(self.MIN_ZOOM, z * factor))
        if z > 0 and target != z:
            self._fit_mode = False
            self.scale(target / z, target / z)
            self.zoomChanged.emit(self.zoom())

    def actual_size(self) -> None:
        self._fit_mode = False
        self.resetTransform()
        self.zoomChanged.emit(1.0)

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt override
        steps = event.angleDelta().y() / 120.0
        if steps:
            self.zoom_by(1.25**steps)
        event.accept()

    def mouseDoubleClickEvent(self, event) -> None:  # noqa: N802
        self.fit()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()


class ElidedLabel(QLabel):
    """A one-line label that elides its text at the end when it is too narrow (never clips it); the full text
    is always the tooltip's first line."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self._tip = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802
        self._full = text or ""
        self._refresh()

    def full_text(self) -> str:
        return self._full

    def set_extra_tooltip(self, tip: str) -> None:
        """More to say under the full text in the tooltip (e.g. where the file came from)."""
        self._tip = tip or ""
        self._refresh()

    def _refresh(self) -> None:
        w = max(0, self.contentsRect().width())
        shown = self.fontMetrics().elidedText(self._full, Qt.TextElideMode.ElideRight, w) if w else self._full
        super().setText(shown)
        lines = [self._full] + ([self._tip] if self._tip and self._tip != self._full else [])
        self.setToolTip("\n".join(x for x in lines if x))

    def resizeEvent(self, e) -> None:  # noqa: N802
        super().resizeEvent(e)
        self._refresh()

    def changeEvent(self, e) -> None:  # noqa: N802
        super().changeEvent(e)
        if e.type() in (QEvent.Type.FontChange, QEvent.Type.StyleChange):
            self._refresh()


class ColormapLegend(QWidget):
    """Horizontal colour bar: 'less' .. 'more influence on the result'."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._lut = colormap_lut("jet")
        self.setMinimumWidth(120)
        self.setFixedHeight(34)
        self.setToolTip("Heat-map colours: how much each region influenced the model's top class (Grad-CAM).")

    def set_colormap(self, name: str) -> None:
        self._lut = colormap_lut(name)
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = QFontMetrics(self.font())
        bar = QRectF(2, 2, self.width() - 4, 12)
        grad = QLinearGradient(bar.topLeft(), bar.topRight())
        for i in range(0, 256, 15):
            r, g, b = (int(v) for v in self._lut[i])
            grad.setColorAt(i / 255.0, QColor(r, g, b))
        r, g, b = (int(v) for v in self._lut[255])
        grad.setColorAt(1.0, QColor(r, g, b))
        p.fillRect(bar, QBrush(grad))
        p.setPen(QPen(GRID))
        p.drawRect(bar)
        p.setPen(MUTED)
        y = int(bar.bottom()) + 2 + fm.ascent()
        narrow = self.width() < 2 * fm.horizontalAdvance("high influence") + 16
        p.drawText(2, y, "low" if narrow else "low influence")
        t = "high" if narrow else "high influence"
        p.drawText(self.width() - 2 - fm.horizontalAdvance(t), y, t)
        p.end()


class ProbabilityBars(QWidget):
    """Seven rows: full class name with its HAM10000 code, a bar and the percentage."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._names: tuple[str, ...] = ()
        self._probs: tuple[float, ...] = ()
        self._top: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Model probabilities for the seven HAM10000 classes (they add up to 100%).\n"
                        "A red mark flags the classes counted in the malignancy score.")

    def set_probabilities(self, names: tuple[str, ...], probs: tuple[float, ...]) -> None:
        self._names, self._probs = tuple(names), tuple(probs)
        self._top = names[int(np.argmax(probs))] if probs else None
        self.setFixedHeight(self.heightForWidth(max(300, self.width())))
        self.updateGeometry()
        self.update()

    def clear(self) -> None:
        self.set_probabilities((), ())

    def _geometry(self, width: int) -> tuple[int, int, list[tuple[int, int, list[str]]]]:
        """(label column width, percentage width, rows as (y, height, label lines)).

        A label that does not fit on one line wraps onto a second line: full names are never cut.
        """
        fm = QFontMetrics(self.font())
        bold = QFont(self.font())
        bold.setBold(True)
        fmb = QFontMetrics(bold)
        pct_w = fm.horizontalAdvance("100.0%") + 6
        labels = [f"{CLASS_FULL_NAMES.get(n, n)} ({n})" for n in self._names]
        widest = max([fmb.horizontalAdvance(t) for t in labels] + [0]) + 12
        label_w = max(120, min(widest, width - pct_w - 90))
        line_h = fm.height()
        rows = []
        y = 2
        for name, label in zip(self._names, labels):
            f = fmb if name == self._top else fm
            if f.horizontalAdvance(label) <= label_w - 10:
                lines = [label]
            else:  # wrap at the last space that fits, keeping the code with the name
                words, lines, cur = label.split(" "), [], ""
                for w in words:
                    cand = f"{cur} {w}".strip()
                    if cur and f.horizontalAdvance(cand) > label_w - 10:
                        lines.append(cur)
                        cur = w
                    else:
                        cur = cand
                lines.append(cur)
            h = max(22, len(lines) * line_h + 8)
            rows.append((y, h, lines))
            y += h
        return label_w, pct_w, rows

    def sizeHint(self) -> QSize:  # noqa: N802
        w = max(300, self.width())
        _, _, rows = self._geometry(w)
        return QSize(320, (rows[-1][0] + rows[-1][1] + 2) if rows else 24)

    def minimumSizeHint(self) -> QSize:  # noqa: N802
        return QSize(240, self.sizeHint().height())

    def hasHeightForWidth(self) -> bool:  # noqa: N802
        return True

    def heightForWidth(self, w: int) -> int:  # noqa: N802
        _, _, rows = self._geometry(w)
        return (rows[-1][0] + rows[-1][1] + 2) if rows else 24

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        h = self.heightForWidth(self.width())
        if h != self.height():
            self.setFixedHeight(h)

    def paintEvent(self, event) -> None:  # noqa: N802
        if not self._names:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        label_w, pct_w, rows = self._geometry(self.width())
        bar_x = label_w + 4
        bar_w = max(20, self.width() - bar_x - pct_w)
        bold = QFont(self.font())
        bold.setBold(True)
        for (name, prob), (y, rh, lines) in zip(zip(self._names, self._probs), rows):
            is_top = name == self._top
            p.setFont(bold if is_top else self.font())
            if name in MALIGNANT_CLASSES:
                p.fillRect(QRectF(0, y + 4, 3, rh - 8), HIGH)
            p.setPen(INK)
            p.drawText(QRectF(8, y, label_w - 8, rh), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       "\n".join(lines))
            track = QRectF(bar_x, y + rh / 2 - 5, bar_w, 10)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor("#e8edf2"))
            p.drawRoundedRect(track, 4, 4)
            fill = QRectF(track.x(), track.y(), max(0.0, min(1.0, prob)) * track.width(), track.height())
            if fill.width() > 0.5:
                p.setBrush(ACCENT if not is_top else QColor("#174a6d"))
                p.drawRoundedRect(fill, 4, 4)
            p.setPen(INK)
            p.drawText(QRectF(bar_x + bar_w, y, pct_w, rh), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignRight,
                       prob_text(prob))
        p.end()


class RiskGauge(QWidget):
    """Malignancy score (0-100%) as a bar, with the operating threshold marked and the band named."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._score: float | None = None
        self._threshold = 0.5
        self.model_default: float | None = None  # the card's threshold: a different one is labelled as such
        self._risk: str | None = None
        self.setMinimumHeight(64)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Malignancy score = p(melanoma) + p(basal cell carcinoma) + p(actinic keratosis / "
                        "intraepithelial carcinoma).\nAt or above the operating threshold the case is in the "
                        "HIGH band.\nThe bar is stretched so the threshold sits in its middle.")

    def set_value(self, score: float | None, threshold: float, risk: str | None) -> None:
        self._score, self._threshold, self._risk = score, float(threshold), risk
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802
        fm = QFontMetrics(self.font())
        return QSize(320, 2 * fm.height() + 34)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = QFontMetrics(self.font())
        w = self.width()
        bar = QRectF(1, fm.height() + 8, w - 2, 14)
        colour = HIGH if self._risk == "high" else LOW
        # headline
        big = QFont(self.font())
        big.setBold(True)
        p.setFont(big)
        if self._score is None:
            p.setPen(MUTED)
            p.drawText(0, fm.ascent() + 2, "Malignancy score: not available")
            p.end()
            return
        band = "HIGH" if self._risk == "high" else "LOW"
        p.setPen(colour)
        head = f"Malignancy score {pct(self._score)}  —  {band} band"
        p.drawText(0, fm.ascent() + 2, QFontMetrics(big).elidedText(head, Qt.TextElideMode.ElideRight, w))
        p.setFont(self.font())
        # Track with the threshold tick. The scale is stretched so that the threshold sits in the middle
        # (0..t on the left half, t..100% on the right): with a low threshold (a few percent) a linear bar
        # would squeeze everything that matters into its first pixels.
        t = min(0.999, max(0.001, self._threshold))

        def pos(v: float) -> float:
            v = max(0.0, min(1.0, v))
            frac = 0.5 * v / t if v <= t else 0.5 + 0.5 * (v - t) / (1 - t)
            return bar.x() + frac * bar.width()

        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(QColor("#e8edf2"))
        p.drawRoundedRect(bar, 5, 5)
        fill = QRectF(bar.x(), bar.y(), pos(self._score) - bar.x(), bar.height())
        if fill.width() > 0.5:
            p.setBrush(colour)
            p.drawRoundedRect(fill, 5, 5)
        tx = pos(t)
        p.setPen(QPen(INK, 2))
        p.drawLine(QPointF(tx, bar.top() - 4), QPointF(tx, bar.bottom() + 4))
        y = bar.bottom() + 6 + fm.ascent()
        p.setPen(MUTED)
        p.drawText(QPointF(bar.x(), y), "0%")
        end = "100%"
        p.drawText(QPointF(bar.right() - fm.horizontalAdvance(end), y), end)
        default = getattr(self, "model_default", None)
        label = f"threshold {pct(self._threshold)}"
        if default is not None and abs(self._threshold - default) > 1e-12:
            label += f" (default {pct(default)})"
        lw = fm.horizontalAdvance(label)
        p.setPen(INK)
        p.drawText(QPointF(min(max(0.0, tx - lw / 2), w - lw), y), label)
        p.end()


class DropZone(QFrame):
    """The empty state: a large dashed target with instructions."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("DropZone")
        self.setAcceptDrops(False)
        self._highlight = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(40, 40, 40, 40)
        lay.addStretch(1)
        title = QLabel("Drop skin-lesion images or a folder here")
        title.setObjectName("DropTitle")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        sub = QLabel("or use <b>Open images…</b> (Ctrl+O), <b>Open folder…</b> (Ctrl+Shift+O) "
                     f"or <b>Paste</b> (Ctrl+V).<br>{formats_text('and')} photos or dermoscopy images. "
                     "Everything stays on this computer.")
        sub.setObjectName("DropSub")
        sub.setAlignment(Qt.AlignmentFlag.AlignCenter)
        sub.setWordWrap(True)
        lay.addWidget(title)
        lay.addSpacing(8)
        lay.addWidget(sub)
        lay.addStretch(1)

    def set_highlight(self, on: bool) -> None:
        self._highlight = on
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802
        super().paintEvent(event)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(ACCENT if self._highlight else QColor("#9aa7b5"), 2.5, Qt.PenStyle.DashLine)
        p.setPen(pen)
        path = QPainterPath()
        path.addRoundedRect(QRectF(self.rect()).adjusted(16, 16, -16, -16), 18, 18)
        p.drawPath(path)
        p.end()
