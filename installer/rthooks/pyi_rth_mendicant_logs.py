"""Runtime hook: a log file when the frozen app has no console.

A windowed executable (Windows ``mendicant-desktop.exe``) has ``sys.stdout``/``sys.stderr`` set to
``None`` (a macOS ``.app`` started from Finder: ``/dev/null``): warnings, tracebacks and progress output would be lost or
crash the code writing them. In that case both streams go to ``mendicant-desktop.log`` (appended, rotated
to ``.log.1`` past 2 MB) and Python's fault handler writes hard crashes there too.

Folder, first match wins: ``MENDICANT_LOG_DIR``; ``$MENDICANT_CONFIG_DIR/logs`` (portable mode sets it);
the platform log folder (``%LOCALAPPDATA%\\MENDICANT\\MENDICANT Desktop\\Logs``,
``~/Library/Logs/MENDICANT Desktop``, ``~/.local/state/MENDICANT Desktop/log``).
With a console (Linux, the CLI, a terminal) nothing changes: output goes to the terminal.
``MENDICANT_LOG_FILE=1`` forces the file even with a console.
"""


def _mendicant_logs() -> None:
    import os
    import sys

    forced = os.environ.get("MENDICANT_LOG_FILE", "").strip().lower() in ("1", "true", "yes", "on")
    # a macOS .app started from Finder has stdout/stderr on /dev/null rather than None
    headless = any(a in ("--batch", "--audit", "--version", "-V", "--help", "-h") for a in sys.argv[1:])
    finder = (sys.platform == "darwin" and ".app/Contents/MacOS/" in sys.executable and not headless
              and sys.stderr is not None and not sys.stderr.isatty())
    forced = forced or finder
    if not forced and sys.stdout is not None and sys.stderr is not None:
        return
    try:
        from pathlib import Path

        if os.environ.get("MENDICANT_LOG_DIR"):
            folder = Path(os.environ["MENDICANT_LOG_DIR"])
        elif os.environ.get("MENDICANT_CONFIG_DIR"):
            folder = Path(os.environ["MENDICANT_CONFIG_DIR"]) / "logs"
        else:
            import platformdirs

            folder = Path(platformdirs.user_log_dir("MENDICANT Desktop", "MENDICANT"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "mendicant-desktop.log"
        if path.is_file() and path.stat().st_size > 2_000_000:
            os.replace(path, path.with_name(path.name + ".1"))
        fh = open(path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
        import time

        fh.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {sys.executable} {' '.join(sys.argv[1:])}\n")
        if sys.stdout is None or forced:
            sys.stdout = fh
        if sys.stderr is None or forced:
            sys.stderr = fh
        import faulthandler

        faulthandler.enable(fh)
        os.environ.setdefault("MENDICANT_LOG_PATH", str(path))
    except Exception:  # noqa: BLE001 - logging must never stop the app from starting
        import io

        if sys.stdout is None:
            sys.stdout = io.StringIO()
        if sys.stderr is None:
            sys.stderr = io.StringIO()


_mendicant_logs()
del _mendicant_logs
