"""Where the application keeps its files: portable mode and the per-user data folder.

Portable mode (``MENDICANT_PORTABLE=1``, or a ``portable.txt`` beside the executable) keeps everything in
folders beside the executable, so a USB-stick install leaves nothing in the user profile. Otherwise the
platform's per-user folders from platformdirs are used. Qt-free, so the CLI and the server find the same
case store as the window.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "MENDICANT Desktop"
APP_AUTHOR = "MENDICANT"
PORTABLE_MARKER = "portable.txt"
#: Folder beside the executable holding the case store in portable mode.
PORTABLE_DATA_DIR = "MENDICANT-data"
#: Overrides the data folder (tests, IT-managed installs).
DATA_ENV = "MENDICANT_DATA_DIR"


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


def data_dir() -> Path:
    """The folder of the case store: ``$MENDICANT_DATA_DIR`` > portable folder > platformdirs user data dir."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env)
    if is_portable():
        return executable_dir() / PORTABLE_DATA_DIR
    import platformdirs

    return Path(platformdirs.user_data_dir(APP_NAME, APP_AUTHOR))
