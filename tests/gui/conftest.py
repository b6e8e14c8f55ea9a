"""GUI test fixtures: offscreen Qt, an isolated settings file, a window with the tiny model loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed")


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path, monkeypatch):
    """Never touch the user's real settings; no portable marker from the environment."""
    monkeypatch.setenv("MENDICANT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("MENDICANT_DATA_DIR", str(tmp_path / "data"))  # the case store too
    monkeypatch.setenv("MENDICANT_SITE_CONFIG", str(tmp_path / "no-site.ini"))  # no site policy unless a test sets one
    monkeypatch.delenv("MENDICANT_PORTABLE", raising=False)
    monkeypatch.delenv("MENDICANT_MODEL", raising=False)


@pytest.fixture(autouse=True)
def _no_modal_dialogs(request, monkeypatch):
    """Questions (remove, quit with unsaved cases) answer "yes" at once, unless a test asks for ``real_dialogs``:
    a modal box in an offscreen run would wait forever (e.g. when pytest-qt closes a window in teardown)."""
    if "real_dialogs" in request.fixturenames:
        return
    from mendicant_desktop.gui.assess_tab import AssessTab

    monkeypatch.setattr(AssessTab, "_confirm_box", lambda self, *a, **k: True)


@pytest.fixture
def real_dialogs():
    """Use the real QMessageBox questions (the test answers them itself)."""


@pytest.fixture
def settings_path(tmp_path) -> Path:
    return tmp_path / "config" / "settings.ini"


@pytest.fixture
def window(qtbot, tiny_bundle, settings_path):
    """The real main window with the tiny model loaded (engine ready)."""
    from mendicant_desktop.gui.app import build_window, create_app

    create_app()
    services, win = build_window(settings_path, tiny_bundle)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitUntil(lambda: services.engine is not None or services.error is not None, timeout=30_000)
    assert services.engine is not None, services.error
    yield win
    win.assess.cancel_all()
    win.close()


def lesion_image(path: Path, size=(320, 240), seed: int = 0) -> Path:
    """A synthetic pigmented lesion on skin, saved as JPEG (real images are used when ../shared/data exists)."""
    from PIL import Image

    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.array([215, 170, 145], np.float32) + rng.normal(0, 8, (h, w, 3))
    inside = (((xx - w / 2) / (w * 0.2)) ** 2 + ((yy - h / 2) / (h * 0.25)) ** 2) < 1
    img[inside] = np.array([90, 60, 45]) + rng.normal(0, 10, (int(inside.sum()), 3))
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def real_or_synthetic_images(tmp_path: Path, n: int = 2) -> list[Path]:
    from tests.conftest import SHARED_DATA, read_labels

    if (SHARED_DATA / "isic_dermoscopy" / "labels.csv").is_file():
        rows = read_labels(SHARED_DATA, "isic_dermoscopy")
        return [SHARED_DATA / "isic_dermoscopy" / "images" / rows[i * 97]["image"] for i in range(n)]
    return [lesion_image(tmp_path / f"lesion {i}.jpg", seed=i) for i in range(n)]


def drop_files(qtbot, win, paths) -> None:
    """Deliver a real drag-enter + drop of file URLs to the main window."""
    from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    enter = QDragEnterEvent(QPoint(200, 200),  # QPoint: the signature every PySide6 >= 6.6 accepts
                            Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                      Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(win, drop)
    assert drop.isAccepted()


def wait_all_scored(qtbot, win, timeout: int = 30_000) -> None:
    qtbot.waitUntil(lambda: win.assess.model.rowCount() > 0 and all(
        c.status in ("done", "error") for c in win.assess.model.cases), timeout=timeout)
