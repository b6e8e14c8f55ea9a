"""``python -m mendicant_desktop`` and the ``mendicant-desktop`` console script.

Headless modes are dispatched by :mod:`mendicant_desktop.cli.main` (no Qt); anything else opens the
window, importing Qt only then. The front ends never import each other (the import-linter layers contract),
so the CLI's ``--serve`` gets the server from here, as a loader: :func:`server_backend`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def server_backend():
    """The REST server's entry module (needs the ``[server]`` extra; ImportError otherwise)."""
    from mendicant_desktop.server import run

    return run


def main(argv: Sequence[str] | None = None) -> int:
    from mendicant_desktop.app.errors import ExitCode
    from mendicant_desktop.cli.main import run_headless

    args = list(sys.argv[1:] if argv is None else argv)
    code = run_headless(args, serve_backend=server_backend)
    if code is not None:
        return code
    try:
        from mendicant_desktop.gui.app import main as gui_main
    except ImportError as exc:
        print(f"mendicant-desktop: the GUI is unavailable ({exc}); headless modes still work.", file=sys.stderr)
        return int(ExitCode.USAGE)
    return int(gui_main(args))


if __name__ == "__main__":
    sys.exit(main())
