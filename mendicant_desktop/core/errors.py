"""One exceptions module for the whole engine, so callers catch one family."""

from __future__ import annotations

#: The one wording of "this input needs more memory than there is" (rows, cases, responses).
MEMORY_REASON = "not enough memory to process this image"


class MendicantError(Exception):
    """Base class of every error the engine raises on purpose."""


class ImageLoadError(MendicantError):
    """An input could not be decoded into a complete image.

    ``reason`` is short and human-readable; it goes straight into batch rows and GUI cases.
    """

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        super().__init__(f"{path}: {reason}" if path else reason)


class ModelVerificationError(MendicantError):
    """The model file or its card is missing, malformed or does not match (sha256)."""


class MetadataError(MendicantError, ValueError):
    """Patient metadata has a value the model cannot take."""


class ConfigError(MendicantError, ValueError):
    """A configuration value is invalid; the message names the key."""


class CancelledError(MendicantError):
    """A long operation was cancelled by the user."""
