"""Structured JSON logging for the server, and the one ASGI middleware that guards and records requests.

Log lines never carry request content: no image bytes, no form fields (age, sex, site), no upload file
names (clinics name files after patients), no query strings and no API keys. A request is logged as its
method, route template (``/jobs/{job_id}``), status, duration, body size, client address, the *name* of
the API key used and the error kind, so an operator can follow traffic without seeing any patient data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import Metrics

ACCESS_LOGGER = "mendicant_desktop.server.access"
#: Fields a log record may carry into the JSON line (anything else passed as ``extra`` is dropped).
ACCESS_FIELDS = ("request_id", "method", "endpoint", "status", "duration_ms", "bytes_in", "bytes_out",
                 "client", "key", "error_kind")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the whitelisted access fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name in ACCESS_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info and record.levelno >= logging.ERROR:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
        return json.dumps(out, ensure_ascii=False)


def log_config(level: str = "info") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and the server: JSON lines on stderr."""
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "mendicant_desktop": {"handlers": ["stderr"], "level": lvl, "propagate": False},
        },
    }


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit: a 413 answer.

    An HTTPException, so that FastAPI's body parsing passes it on instead of turning it into a 400.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds the {limit} byte limit")


def _json_response(status: int, kind: str, reason: str, headers: list[tuple[bytes, bytes]] | None = None):
    body = json.dumps({"error": {"kind": kind, "reason": reason}}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *(headers or [])]}
    return start, {"type": "http.response.body", "body": body}


class RequestGuard:
    """Pure ASGI middleware: request id, body-size limit, per-request timeout, metrics and the access log.

    The size limit is checked on ``Content-Length`` before anything is read, and again on the bytes actually
    received (chunked uploads). The timeout answers 504 if the response has not started by then; work
    already handed to a thread finishes in the background and its result is dropped.
    """

    def __init__(self, app: ASGIApp, *, metrics: Metrics, max_body_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = int(max_body_bytes)
        self.timeout_s = float(timeout_s)
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid
        state: dict[str, Any] = {"status": 500, "bytes_out": 0, "started": False, "bytes_in": 0}
        rid_header = (b"x-request-id", rid.encode())

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["started"] = True
                state["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), rid_header]}
            elif message["type"] == "http.response.body":
                state["bytes_out"] += len(message.get("body", b""))
            await send(message)

        async def receive_limited() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["bytes_in"] += len(message.get("body", b""))
                if state["bytes_in"] > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return message

        async def answer(status: int, kind: str, reason: str) -> None:
            state["error_kind"] = kind
            start, body = _json_response(status, kind, reason)
            await send_wrapped(start)
            await send_wrapped(body)

        declared = _content_length(scope)
        try:
            if declared is not None and declared > self.max_body:
                await answer(413, "too_large", f"request body of {declared} bytes exceeds the "
                             f"{self.max_body} byte limit")
            else:
                await asyncio.wait_for(self.app(scope, receive_limited, send_wrapped), timeout=self.timeout_s)
        except BodyTooLarge:
            if not state["started"]:
                await answer(413, "too_large", f"request body exceeds the {self.max_body} byte limit")
        except asyncio.TimeoutError:
            if not state["started"]:
                await answer(504, "timeout", f"the request took longer than {self.timeout_s:g} s")
        finally:
            self._record(scope, state, rid, time.perf_counter() - t0, declared)

    def _record(self, scope: Scope, state: dict[str, Any], rid: str, secs: float, declared: int | None) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        status = int(state["status"])
        sstate = scope.get("state", {})
        kind = state.get("error_kind") or sstate.get("error_kind")
        self.metrics.requests.labels(endpoint, scope.get("method", ""), str(status)).inc()
        self.metrics.latency.labels(endpoint).observe(secs)
        if kind:
            self.metrics.errors.labels(kind).inc()
        client = scope.get("client")
        self.log.info(
            "request",
            extra={
                "request_id": rid, "method": scope.get("method"), "endpoint": endpoint, "status": status,
                "duration_ms": round(secs * 1000, 2), "bytes_in": declared if declared is not None else state["bytes_in"],
                "bytes_out": state["bytes_out"], "client": client[0] if client else None,
                "key": sstate.get("key_name"), "error_kind": kind,
            },
        )


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
