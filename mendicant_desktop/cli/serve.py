"""``mendicant-desktop --serve``: the local REST service (FastAPI + uvicorn, the ``[server]`` extra).

This module is only the command line: it parses the options into the server's ``ServerConfig`` and hands it
to the server's ``serve()``. ``cli`` never imports the server (the layers contract): the server's entry module
(:mod:`mendicant_desktop.server.run`) comes from ``backend()``, given by ``mendicant_desktop.__main__``.
See ``docs/api.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mendicant_desktop.app.errors import MendicantError

from . import ArgumentParser, ExitCode, UsageError, check_threads, err, run_guarded

DESCRIPTION = """Serve the assessment over HTTP for EHR, PACS and dermatoscope software: POST /predict,
/batch_predict, /explain; GET /health, /ready, /metrics, /model, /docs. Loopback only by default; any other
address needs --api-key-file (clients send X-API-Key). Endpoints and security: docs/api.md"""


def build_parser(backend: Any) -> argparse.ArgumentParser:
    d = backend.ServerConfig()
    p = ArgumentParser(prog="mendicant-desktop --serve", description=DESCRIPTION,
                       usage="mendicant-desktop --serve [--host 127.0.0.1] [--port 8000] [--api-key-file F] "
                             "[--workers N] [options]",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", required=True, help=argparse.SUPPRESS)
    p.add_argument("--host", default=d.host, help=f"address to listen on (default {d.host}, loopback only)")
    p.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port})")
    p.add_argument("--api-key-file", metavar="F", help="file of NAME:SHA256 lines; required for non-loopback --host")
    p.add_argument("--add-api-key", metavar="NAME",
                   help="create a new key NAME in --api-key-file, print it once, and exit (only its hash is stored)")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="uvicorn worker processes (default 1; each loads the model and has its own rate limits)")
    p.add_argument("--model", metavar="CARD", help="model card; default $MENDICANT_MODEL, else the bundled model")
    p.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads per worker (default: up to 4)")
    p.add_argument("--rate-limit", type=int, default=d.rate_limit_per_minute, metavar="N",
                   help=f"requests per minute per API key (default {d.rate_limit_per_minute})")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_bytes / 2**20, metavar="MB",
                   help=f"request body limit (default {d.max_body_bytes / 2**20:g} MB)")
    p.add_argument("--timeout", type=float, default=d.request_timeout_s, metavar="S",
                   help=f"per-request timeout in seconds (default {d.request_timeout_s:g})")
    p.add_argument("--max-batch-items", type=int, default=d.max_batch_items, metavar="N",
                   help=f"images per /batch_predict request (default {d.max_batch_items})")
    p.add_argument("--batch-window-ms", type=float, default=d.batch_window_ms, metavar="MS",
                   help=f"dynamic batching window, 0 = off (default {d.batch_window_ms:g}, at most "
                        f"{backend.MAX_BATCH_WINDOW_MS:g})")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, metavar="N",
                   help=f"images per ONNX Runtime batch (default {d.max_batch_size})")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from ORIGIN (repeatable); CORS is off by default")
    p.add_argument("--ssl-certfile", metavar="PEM", help="TLS certificate (with --ssl-keyfile): serve HTTPS")
    p.add_argument("--ssl-keyfile", metavar="PEM", help="TLS private key")
    p.add_argument("--log-level", default=d.log_level, choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    return p


def main(argv: Sequence[str] | None = None, backend: Callable[[], Any] | None = None) -> int:
    """``--serve``: ``backend()`` returns the server's entry module (ImportError without the extra)."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    return run_guarded("--serve", lambda: _run(args_list, backend), args_list, interrupted="stopped")


def _load(backend: Callable[[], Any] | None) -> Any:
    if backend is None:
        raise UsageError("--serve is not available from this entry point; run mendicant-desktop --serve")
    try:
        return backend()
    except ImportError as exc:
        raise UsageError(f"--serve needs the server extra: pip install \"mendicant-desktop[server]\" ({exc})") from None


def _run(argv: list[str], backend: Callable[[], Any] | None) -> ExitCode:
    server = _load(backend)
    parser = build_parser(server)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return ExitCode.OK
    args = parser.parse_args(argv)
    check_threads(args.threads)
    if args.add_api_key:
        if not args.api_key_file:
            raise UsageError("--add-api-key needs --api-key-file (the file to add the key to)")
        try:
            key = server.add_key(args.api_key_file, args.add_api_key)
        except MendicantError as exc:
            raise UsageError(str(exc)) from None
        print(key)
        err(f"added key {args.add_api_key!r} to {args.api_key_file}; the key is shown only now")
        return ExitCode.OK
    try:
        config = server.ServerConfig(
            host=args.host, port=args.port, api_key_file=args.api_key_file, workers=args.workers, model=args.model,
            threads=args.threads, rate_limit_per_minute=args.rate_limit, max_body_bytes=int(args.max_body_mb * 2**20),
            request_timeout_s=args.timeout, max_batch_items=args.max_batch_items,
            batch_window_ms=args.batch_window_ms, max_batch_size=args.max_batch_size,
            cors_origins=tuple(args.cors_origin), ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
            log_level=args.log_level,
        )
        server.serve(config)
    except MendicantError as exc:  # a refused bind, a bad value, an unreadable key file (ConfigError)
        raise UsageError(f"--serve: {exc}") from None
    return ExitCode.OK
