"""``python -m mendicant_desktop`` and the ``mendicant-desktop`` console script."""

from __future__ import annotations

import sys


def main() -> int:
    from mendicant_desktop.cli.main import main as cli_main

    return cli_main()


if __name__ == "__main__":
    sys.exit(main())
