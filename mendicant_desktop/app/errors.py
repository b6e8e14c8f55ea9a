"""The user-facing errors of every front end, and the process exit codes.

One family: everything here derives from :class:`~mendicant_desktop.core.errors.MendicantError`, so a
front end catches one base class. The CLI maps :class:`UsageError` to :attr:`ExitCode.USAGE`, the GUI shows
the message, the server answers 4xx with it. :func:`failure_reason` turns any exception met while scoring
one input into the short reason written in a row, a case or a response (never a traceback).
"""

from __future__ import annotations

import enum

from mendicant_desktop.core.errors import (
    MEMORY_REASON,
    CancelledError,
    ConfigError,
    ImageLoadError,
    MendicantError,
    MetadataError,
    ModelVerificationError,
)

__all__ = [
    "CancelledError", "ConfigError", "ExitCode", "ImageLoadError", "LabelsError", "MEMORY_REASON", "MendicantError",
    "MetadataError", "ModelLoadError", "ModelVerificationError", "OutputFileError", "UsageError", "failure_reason",
]


class ExitCode(enum.IntEnum):
    """Process exit codes of ``--batch``, ``--audit``, ``--selftest`` (documented in ``--help``)."""

    OK = 0  # every input scored
    INTERNAL_ERROR = 1  # unexpected internal error (traceback only with --debug)
    USAGE = 2  # bad arguments or configuration, or a model that fails verification
    PARTIAL = 3  # finished, but some inputs failed
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; rows written so far are kept and valid


class UsageError(MendicantError, ValueError):
    """A usage or configuration problem the user can fix: its message is shown as is (exit code 2)."""


class LabelsError(UsageError):
    """A labels file that cannot be used at all (missing, empty, no image or label column)."""


class ModelLoadError(UsageError):
    """The model could not be verified or loaded; the message says which and why."""


class OutputFileError(UsageError):
    """An existing output file cannot be resumed (other columns, not our format, unreadable)."""


def failure_reason(exc: BaseException, stage: str = "scoring") -> str:
    """The short, human-readable reason an input failed, for a row, a case or a response.

    ``stage`` names what was being done ("decoding", "scoring", "model inference") for unexpected errors.
    """
    if isinstance(exc, ImageLoadError):
        return exc.reason
    if isinstance(exc, MemoryError):
        return MEMORY_REASON
    if isinstance(exc, MendicantError):
        return str(exc) or type(exc).__name__
    return f"unexpected error while {stage}: {type(exc).__name__}: {exc}"
