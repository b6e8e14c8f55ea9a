"""Render the app icon (``resources/icons/mendicant.svg``) to the raster formats installers need.

    python installer/make_icons.py        # -> resources/icons/mendicant.png (256 px), mendicant.ico
                                          #    (16..256 px), mendicant.icns (macOS, 16..1024 px)

The SVG is rasterised with QtSvg (offscreen, no display needed) so every format shows exactly the icon
the window uses; Pillow writes the multi-size ICO/ICNS. Without QtSvg a simple equivalent is drawn with
Pillow. The outputs are committed; rerun after changing the SVG.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def render_qt(svg: Path, size: int) -> Image.Image | None:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    try:
        from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
        from PySide6.QtGui import QGuiApplication, QImage, QPainter
        from PySide6.QtSvg import QSvgRenderer
    except ImportError:
        return None
    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 - keeps Qt alive
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        return None
    img = QImage(size, size, QImage.Format.Format_ARGB32)
    img.fill(Qt.GlobalColor.transparent)
    painter = QPainter(img)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    ba = QByteArray()
    buf = QBuffer(ba)
    buf.open(QIODevice.OpenModeFlag.WriteOnly)
    img.save(buf, "PNG")
    buf.close()
    return Image.open(io.BytesIO(bytes(ba.data()))).convert("RGBA")


def render_pillow(size: int) -> Image.Image:
    """The same motif drawn with Pillow: blue rounded square, skin disc, lesion, magnifier."""
    s = size / 64.0
    img = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    d.rounded_rectangle([2 * s, 2 * s, 62 * s, 62 * s], radius=14 * s, fill="#1f5f8b")
    d.ellipse([14 * s, 14 * s, 50 * s, 50 * s], fill="#f1d3c2")
    d.ellipse([23 * s, 23 * s, 40 * s, 39 * s], fill="#6b3f2a")
    d.ellipse([37 * s, 37 * s, 55 * s, 55 * s], outline="#ffffff", width=max(1, round(3 * s)))
    d.line([52 * s, 52 * s, 58 * s, 58 * s], fill="#ffffff", width=max(1, round(3.5 * s)))
    return img


def main() -> int:
    svg = ICONS / "mendicant.svg"
    big = (render_qt(svg, 1024) if svg.is_file() else None) or render_pillow(1024)
    big.resize((256, 256), Image.Resampling.LANCZOS).save(ICONS / "mendicant.png", optimize=True)
    big.save(ICONS / "mendicant.ico", sizes=[(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128),
                                             (256, 256)])
    try:
        big.save(ICONS / "mendicant.icns")
    except (OSError, ValueError, KeyError) as exc:  # ICNS writing needs a recent Pillow
        print(f"make_icons: no .icns ({exc}); PyInstaller converts the PNG on macOS", file=sys.stderr)
    for f in ("mendicant.png", "mendicant.ico", "mendicant.icns"):
        p = ICONS / f
        if p.is_file():
            print(f"{p.relative_to(ICONS.parents[1])}: {p.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
