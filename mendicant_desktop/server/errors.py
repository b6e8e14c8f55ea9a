"""How the server answers an error: HTTP status, a machine-readable kind and the human-readable reason.

The errors themselves are the application layer's one family (``mendicant_desktop.app.errors``);
:func:`http_error_for` only decides which status and kind each one is answered with.
"""

from __future__ import annotations

from typing import Any


def error_body(kind: str, reason: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"kind": kind, "reason": reason}
    if details is not None:
        err["details"] = details
    return {"error": err}


class ApiError(Exception):
    """An HTTP answer other than success, raised anywhere in a request and rendered by the app's handler."""

    def __init__(self, status: int, kind: str, reason: str, *, headers: dict[str, str] | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind
        self.reason = reason
        self.headers = headers
        self.details = details
