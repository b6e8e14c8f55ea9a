"""Small Qt helpers: numpy <-> QImage, resources (QSS, icons), palette constants."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PySide6.QtCore import QBuffer, QByteArray, QIODevice, QObject
from PySide6.QtGui import QColor, QIcon, QImage

from mendicant_desktop.core.bundle import resources_dir

# One palette for the whole app (QSS uses the same values).
INK = QColor("#1d2733")
MUTED = QColor("#5b6673")
ACCENT = QColor("#1f5f8b")
HIGH = QColor("#b3261e")  # high-risk band
LOW = QColor("#2e7d32")  # low-risk band
WARN_BG = QColor("#fff4e0")
WARN_FG = QColor("#7a4b00")
ERROR = QColor("#b00020")
GRID = QColor("#d5dbe3")

STATUS_COLOURS = {"queued": MUTED, "scoring": ACCENT, "done": LOW, "error": ERROR}


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """RGB uint8 (H, W, 3) -> an owning QImage (RGB888)."""
    a = np.ascontiguousarray(rgb[..., :3], dtype=np.uint8)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def rgba_to_qimage(rgba: np.ndarray) -> QImage:
    a = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w = a.shape[:2]
    return QImage(a.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()


def qimage_to_rgb(img: QImage) -> np.ndarray:
    """Any QImage -> RGB uint8 (H, W, 3) copy."""
    img = img.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return buf[:, : 3 * w].reshape(h, w, 3).copy()


def qimage_png_bytes(img: QImage) -> bytes:
    ba = QByteArray()
    buf = QBuffer(ba)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "PNG")
    buf.close()
    return bytes(ba.data())


def styles_dir() -> Path:
    return resources_dir() / "styles"


def icons_dir() -> Path:
    return resources_dir() / "icons"


def icon(name: str) -> QIcon:
    """``resources/icons/<name>.svg`` (an empty icon if missing: never fail over artwork)."""
    p = icons_dir() / f"{name}.svg"
    return QIcon(str(p)) if p.is_file() else QIcon()


def load_stylesheet() -> str:
    p = styles_dir() / "mendicant.qss"
    try:
        return p.read_text(encoding="utf-8")
    except OSError:
        return ""


def risk_colour(risk: str | None) -> QColor:
    return HIGH if risk == "high" else LOW if risk == "low" else MUTED


@contextlib.contextmanager
def signals_blocked(*objects: QObject) -> Iterator[None]:
    """Block the objects' signals inside the block (a plain-Python QSignalBlocker)."""
    previous = [o.blockSignals(True) for o in objects]
    try:
        yield
    finally:
        for o, was in zip(objects, previous):
            o.blockSignals(was)
