"""Persistent user settings (an INI file through QSettings) and where that file lives.

Location, first match wins:

1. ``MENDICANT_CONFIG_DIR`` (tests, IT-managed installs);
2. portable mode -- ``MENDICANT_PORTABLE=1`` or a ``portable.txt`` file beside the executable: a
   ``MENDICANT-settings`` folder beside the executable;
3. the platform's per-user config dir from platformdirs (``~/.config/MENDICANT Desktop`` on Linux,
   ``%LOCALAPPDATA%\\MENDICANT\\MENDICANT Desktop`` on Windows, ``~/Library/Application Support/...``
   on macOS).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Signal

from mendicant_desktop.core.inference import default_threads
from mendicant_desktop.core.saliency import COLORMAPS

APP_NAME = "MENDICANT Desktop"
APP_AUTHOR = "MENDICANT"
SETTINGS_FILE = "settings.ini"
PORTABLE_MARKER = "portable.txt"
PORTABLE_DIR = "MENDICANT-settings"

# Settings keys: every module reads and compares these names, never bare strings.
THREADS_KEY = "inference/threads"
THRESHOLD_KEY = "inference/threshold"
OVERLAY_PREFIX = "overlay/"
COLORMAP_KEY = OVERLAY_PREFIX + "colormap"
OPACITY_KEY = OVERLAY_PREFIX + "opacity"
SHOW_OVERLAY_KEY = OVERLAY_PREFIX + "show"
ESTIMATE_FST_KEY = "skin/estimate_fst"
LAST_DIR_KEY = "ui/last_dir"
GEOMETRY_KEY = "ui/geometry"
STATE_KEY = "ui/state"
#: Most inference threads the settings accept.
MAX_THREADS = 64


def executable_dir() -> Path:
    """Folder of the running executable (the PyInstaller app, else the Python interpreter)."""
    return Path(sys.executable).resolve().parent


def is_portable() -> bool:
    env = os.environ.get("MENDICANT_PORTABLE", "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return (executable_dir() / PORTABLE_MARKER).is_file()


def config_dir() -> Path:
    env = os.environ.get("MENDICANT_CONFIG_DIR")
    if env:
        return Path(env)
    if is_portable():
        return executable_dir() / PORTABLE_DIR
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME, APP_AUTHOR))


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


@dataclass(frozen=True)
class Defaults:
    threads: int
    colormap: str = "jet"
    opacity: float = 0.45
    estimate_fst: bool = True
    show_overlay: bool = True


class AppSettings(QObject):
    """Typed access to the settings file. ``changed(key)`` fires after every write.

    ``threshold`` is ``None`` while the model's own operating threshold is in use.
    """

    changed = Signal(str)

    def __init__(self, path: str | os.PathLike | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.path = Path(path) if path is not None else settings_path()
        with contextlib.suppress(OSError):  # read-only location: QSettings still works in memory
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._qs = QSettings(str(self.path), QSettings.Format.IniFormat)
        self.defaults = Defaults(threads=default_threads())

    # -- helpers ------------------------------------------------------------------------------
    def _get(self, key: str, default):
        v = self._qs.value(key, default)
        return default if v is None else v

    def _set(self, key: str, value) -> None:
        if value is None:
            self._qs.remove(key)
        else:
            self._qs.setValue(key, value)
        self._qs.sync()
        self.changed.emit(key)

    def sync(self) -> None:
        self._qs.sync()

    def writable(self) -> bool:
        return self._qs.status() == QSettings.Status.NoError and self._qs.isWritable()

    # -- values -------------------------------------------------------------------------------
    @property
    def threads(self) -> int:
        try:
            n = int(self._get(THREADS_KEY, self.defaults.threads))
        except (TypeError, ValueError):
            return self.defaults.threads
        return max(1, min(MAX_THREADS, n))

    @threads.setter
    def threads(self, n: int) -> None:
        self._set(THREADS_KEY, max(1, min(MAX_THREADS, int(n))))

    @property
    def threshold(self) -> float | None:
        raw = self._get(THRESHOLD_KEY, None)
        if raw in (None, ""):
            return None
        try:
            t = float(raw)
        except (TypeError, ValueError):
            return None
        return t if math.isfinite(t) and 0.0 < t < 1.0 else None

    @threshold.setter
    def threshold(self, t: float | None) -> None:
        if t is not None and not (0.0 < float(t) < 1.0):
            raise ValueError(f"threshold must lie in (0, 1), got {t}")
        self._set(THRESHOLD_KEY, None if t is None else float(t))

    def effective_threshold(self, model_default: float) -> float:
        t = self.threshold
        return model_default if t is None else t

    @property
    def colormap(self) -> str:
        v = str(self._get(COLORMAP_KEY, self.defaults.colormap))
        return v if v in COLORMAPS else self.defaults.colormap

    @colormap.setter
    def colormap(self, name: str) -> None:
        if name not in COLORMAPS:
            raise ValueError(f"unknown colormap {name!r}")
        self._set(COLORMAP_KEY, name)

    @property
    def opacity(self) -> float:
        try:
            v = float(self._get(OPACITY_KEY, self.defaults.opacity))
        except (TypeError, ValueError):
            return self.defaults.opacity
        return min(1.0, max(0.0, v))

    @opacity.setter
    def opacity(self, v: float) -> None:
        self._set(OPACITY_KEY, round(min(1.0, max(0.0, float(v))), 3))

    @staticmethod
    def _bool(v, default: bool) -> bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str):
            return v.strip().lower() in ("1", "true", "yes", "on")
        try:
            return bool(int(v))
        except (TypeError, ValueError):
            return default

    @property
    def estimate_fst(self) -> bool:
        return self._bool(self._get(ESTIMATE_FST_KEY, self.defaults.estimate_fst), self.defaults.estimate_fst)

    @estimate_fst.setter
    def estimate_fst(self, on: bool) -> None:
        self._set(ESTIMATE_FST_KEY, bool(on))

    @property
    def show_overlay(self) -> bool:
        return self._bool(self._get(SHOW_OVERLAY_KEY, self.defaults.show_overlay), self.defaults.show_overlay)

    @show_overlay.setter
    def show_overlay(self, on: bool) -> None:
        self._set(SHOW_OVERLAY_KEY, bool(on))

    @property
    def last_dir(self) -> str:
        return str(self._get(LAST_DIR_KEY, ""))

    @last_dir.setter
    def last_dir(self, d: str) -> None:
        self._set(LAST_DIR_KEY, str(d))

    def window_state(self) -> tuple[bytes | None, bytes | None]:
        return self._qs.value(GEOMETRY_KEY), self._qs.value(STATE_KEY)

    def save_window_state(self, geometry, state) -> None:
        self._qs.setValue(GEOMETRY_KEY, geometry)
        self._qs.setValue(STATE_KEY, state)
        self._qs.sync()
