"""Runtime hook (runs before the app): portable mode.

Portable mode keeps settings (and logs) in ``MENDICANT-settings/`` beside the executable instead of the
user's profile, e.g. for a USB stick or a shared read-write folder. It is on when

* the environment has ``MENDICANT_PORTABLE=1`` (``0``/``false`` forces it off), or
* a file ``portable.txt`` sits beside the executable (``dist/mendicant-desktop/portable.txt``; for a macOS
  ``.app`` beside the ``.app`` bundle or in ``Contents/MacOS``).

The hook resolves that once and exports the decision, so the GUI settings (``gui/settings.py``), the log
hook and every headless mode see the same answer:

* ``MENDICANT_PORTABLE=1`` and
* ``MENDICANT_CONFIG_DIR=<portable root>/MENDICANT-settings`` unless ``MENDICANT_CONFIG_DIR`` is already set
  (an explicit IT-managed location wins).
"""


def _mendicant_portable() -> None:
    import os
    import sys
    from pathlib import Path

    marker = "portable.txt"
    folder = "MENDICANT-settings"
    env = os.environ.get("MENDICANT_PORTABLE", "").strip().lower()
    if env in ("0", "false", "no", "off"):
        return
    exe_dir = Path(sys.executable).resolve().parent
    roots = [exe_dir]
    # macOS: .../MENDICANT Desktop.app/Contents/MacOS/mendicant-desktop -> also look beside the .app
    if exe_dir.name == "MacOS" and exe_dir.parent.name == "Contents" and exe_dir.parent.parent.suffix == ".app":
        roots.append(exe_dir.parent.parent.parent)
    forced = env in ("1", "true", "yes", "on")
    # the folder holding the marker; forced on without a marker: beside the executable (or the .app)
    root = next((r for r in roots if (r / marker).is_file()), roots[-1] if forced else None)
    if root is None:
        return
    os.environ["MENDICANT_PORTABLE"] = "1"
    os.environ.setdefault("MENDICANT_CONFIG_DIR", str(root / folder))


_mendicant_portable()
del _mendicant_portable
