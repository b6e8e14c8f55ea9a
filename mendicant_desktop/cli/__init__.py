"""Headless front end: argparse, progress bars and signals over :mod:`mendicant_desktop.app`.

Never imports Qt: ``--batch`` and ``--audit`` run with no display. The exit codes and user-facing errors
live in :mod:`mendicant_desktop.app.errors` (shared with the GUI and the server).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from mendicant_desktop.app.errors import ExitCode, UsageError

__all__ = ["EXIT_CODES_HELP", "ArgumentParser", "ExitCode", "StopSignal", "UsageError", "err", "progress_bar",
           "check_threads", "run_guarded", "threads_help"]

EXIT_CODES_HELP = """exit codes:
  0    every input scored
  3    finished, but some inputs failed (see the rows with status=error)
  2    usage or configuration error (bad arguments, or a model that fails verification)
  130  interrupted by Ctrl-C or SIGTERM; rows written so far are kept and valid
  1    unexpected internal error (traceback only with --debug)"""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that raises :class:`UsageError` instead of exiting, so callers map it to ExitCode.USAGE."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: error: {message}\n{self.format_usage().strip()}")


def err(msg: str) -> None:
    """Messages and summaries go to stderr, flushed: stdout stays free for data."""
    print(msg, file=sys.stderr, flush=True)


def progress_bar(total: int, quiet: bool):
    """The tqdm bar of ``--batch`` and ``--audit`` (on stderr; disabled by ``--quiet``)."""
    from tqdm import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, disable=quiet, dynamic_ncols=True, mininterval=0.5,
                smoothing=0.1, desc="scoring")


def threads_help() -> str:
    """``--threads``'s help (imports the engine module only when a mode's parser is built)."""
    from mendicant_desktop.core.inference import MAX_DEFAULT_THREADS

    return f"CPU threads for inference and for decoding (default: up to {MAX_DEFAULT_THREADS}, the core count)"


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise UsageError("--threads must be at least 1")


class StopSignal:
    """SIGINT/SIGTERM: the first asks the run to stop cleanly (``event``); a second interrupts at once."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.event.is_set():
            raise KeyboardInterrupt
        self.signum = signum
        self.event.set()

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()


def run_guarded(mode: str, body: Callable[[], int], args: Sequence[str], *, interrupted: str) -> int:
    """Run a headless mode, mapping usage errors, Ctrl-C and unexpected errors onto :class:`ExitCode`.

    A traceback is printed only with ``--debug``; otherwise one line names the error.
    """
    debug = "--debug" in args
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="mendicant-desktop: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        return int(body())
    except UsageError as exc:
        err(str(exc))
        return int(ExitCode.USAGE)
    except KeyboardInterrupt:
        err(f"mendicant-desktop {mode}: {interrupted}")
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        if debug:
            import traceback

            traceback.print_exc()
        else:
            err(f"mendicant-desktop {mode}: internal error: {type(exc).__name__}: {exc} (run with --debug for details)")
        return int(ExitCode.INTERNAL_ERROR)
