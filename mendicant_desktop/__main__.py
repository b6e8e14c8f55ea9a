"""``python -m mendicant_desktop`` and the ``mendicant-desktop`` console script.

Headless modes are dispatched by :mod:`mendicant_desktop.cli.main` (no Qt); anything else opens the
window, importing Qt only then.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from mendicant_desktop.app.errors import ExitCode
    from mendicant_desktop.cli.main import run_headless

    args = list(sys.argv[1:] if argv is None else argv)
    code = run_headless(args)
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
