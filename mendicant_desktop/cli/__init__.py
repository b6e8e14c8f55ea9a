"""Headless entry points. Never imports Qt: ``--batch`` and ``--audit`` run with no display."""

from __future__ import annotations

import argparse
import enum


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in ``--help``."""

    OK = 0  # every input scored
    INTERNAL_ERROR = 1  # unexpected internal error (traceback only with --debug)
    USAGE = 2  # bad arguments or configuration, or a model that fails verification
    PARTIAL = 3  # finished, but some inputs failed
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; rows written so far are kept and valid


EXIT_CODES_HELP = """exit codes:
  0    every input scored
  3    finished, but some inputs failed (see the rows with status=error)
  2    usage or configuration error (bad arguments, or a model that fails verification)
  130  interrupted by Ctrl-C or SIGTERM; rows written so far are kept and valid
  1    unexpected internal error (traceback only with --debug)"""


class UsageError(Exception):
    """A usage or configuration problem: its message is printed and the exit code is 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting, so callers map it to ExitCode.USAGE."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}\n{self.format_usage().strip()}")
