"""Headless dispatch for ``mendicant-desktop``: ``--batch``, ``--audit``, ``--version``, ``--help``.

``mendicant_desktop.__main__`` calls :func:`run_headless` first and starts the GUI only when it returns
None, so these modes work on a machine with no display and no Qt platform plugin.
"""

from __future__ import annotations

from collections.abc import Sequence

from mendicant_desktop import __version__

from . import ExitCode

USAGE = """usage:
  mendicant-desktop [IMAGE ...]                 open the window (with these images queued)
  mendicant-desktop --batch PATH [PATH ...] --out FILE [options]   score files/folders headless
  mendicant-desktop --audit LABELS.csv --images DIR --out REPORT.html [options]   fairness audit
  mendicant-desktop --selftest [--screenshot PNG]   start the window, score a test image, exit
  mendicant-desktop --version                    print the app and bundled model versions
Run a mode with --help for its options."""


def version_text() -> str:
    """The app's version and the model ``--batch`` would load (the same ``--model``/``MENDICANT_MODEL`` rule)."""
    from mendicant_desktop.app.model import describe_model

    return f"mendicant-desktop {__version__}\n{describe_model()}"


def run_headless(args: Sequence[str]) -> int | None:
    """Run a headless mode if ``args`` ask for one; None means "not headless: open the window".

    The GUI is started by ``mendicant_desktop.__main__``, outside this package, so that nothing in
    ``cli`` ever imports Qt (an import-linter contract).
    """
    args = list(args)
    if "--batch" in args:
        from .batch import main as batch_main

        return int(batch_main(args))
    if "--audit" in args:
        from .audit import main as audit_main

        return int(audit_main(args))
    if args[:1] == ["--version"] or args == ["-V"]:
        print(version_text())
        return int(ExitCode.OK)
    if args[:1] in (["--help"], ["-h"]):
        print(USAGE)
        return int(ExitCode.OK)
    return None
