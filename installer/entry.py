"""PyInstaller entry script: the frozen ``mendicant-desktop`` executable.

Same dispatch as the console script (``mendicant_desktop.__main__:main``): ``--batch``, ``--audit``,
``--version``, ``--help`` headless; ``--selftest`` and everything else open the window.
"""

import sys

from mendicant_desktop.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
