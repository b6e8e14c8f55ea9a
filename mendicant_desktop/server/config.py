"""Server settings: one frozen dataclass, validated once, so every part of the server reads the same values.

The command line (``cli/``) builds a :class:`ServerConfig`; the server itself never parses arguments.
With several uvicorn workers the config travels to each worker process as JSON in an environment
variable (:data:`CONFIG_ENV`), because uvicorn starts workers from an import string.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from dataclasses import asdict, dataclass, fields

from mendicant_desktop.core.errors import ConfigError

#: The environment variable that carries a JSON :class:`ServerConfig` into uvicorn worker processes.
CONFIG_ENV = "MENDICANT_SERVER_CONFIG"
#: The design's ceiling for the dynamic-batching window: a request never waits longer than this for company.
MAX_BATCH_WINDOW_MS = 100.0


@dataclass(frozen=True)
class ServerConfig:
    """Everything the REST service needs to start. Defaults are the safe ones (loopback, CORS off)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key_file: str | None = None
    workers: int = 1
    model: str | None = None  # a model card path; None: the app layer's rule ($MENDICANT_MODEL, else bundled)
    threads: int | None = None  # ONNX Runtime intra-op threads; None: the engine's default
    rate_limit_per_minute: int = 100  # per API key (or per client address when no key file is used)
    max_body_bytes: int = 20 * 1024 * 1024
    request_timeout_s: float = 30.0
    max_batch_items: int = 32  # images per /batch_predict request
    batch_window_ms: float = 10.0  # dynamic batching: how long a /predict waits for others (0 = off)
    max_batch_size: int = 8  # images per ONNX Runtime run when batching
    cors_origins: tuple[str, ...] = ()
    max_jobs: int = 16  # occlusion jobs kept (queued, running or finished) at once
    job_ttl_s: float = 600.0  # finished jobs are forgotten after this long
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    log_level: str = "info"

    def __post_init__(self) -> None:
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
        checks = [
            (1 <= self.port <= 65535, f"port {self.port} must lie in 1-65535"),
            (self.workers >= 1, "workers must be at least 1"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.rate_limit_per_minute >= 1, "rate limit must be at least 1 request per minute"),
            (self.max_body_bytes >= 1024, "the body size limit must be at least 1 KiB"),
            (self.request_timeout_s > 0, "the request timeout must be positive"),
            (self.max_batch_items >= 1, "max batch items must be at least 1"),
            (0 <= self.batch_window_ms <= MAX_BATCH_WINDOW_MS,
             f"the batching window must lie in 0-{MAX_BATCH_WINDOW_MS:g} ms (got {self.batch_window_ms:g})"),
            (self.max_batch_size >= 1, "max batch size must be at least 1"),
            (self.max_jobs >= 1, "max jobs must be at least 1"),
            (self.job_ttl_s > 0, "the job time-to-live must be positive"),
            ((self.ssl_certfile is None) == (self.ssl_keyfile is None),
             "TLS needs both a certificate file and its key file"),
            (self.log_level in ("critical", "error", "warning", "info", "debug"), f"unknown log level {self.log_level!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for origin in self.cors_origins:
            if origin != "*" and not origin.startswith(("http://", "https://")):
                raise ConfigError(f"CORS origin {origin!r} must start with http:// or https://")

    @property
    def batching(self) -> bool:
        return self.batch_window_ms > 0 and self.max_batch_size > 1

    @property
    def tls(self) -> bool:
        return self.ssl_certfile is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServerConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_env(cls) -> ServerConfig:
        text = os.environ.get(CONFIG_ENV)
        return cls.from_json(text) if text else cls()


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine (``127.0.0.0/8``, ``::1``, ``localhost``)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_bind(config: ServerConfig) -> None:
    """Refuse to listen beyond this machine without API keys: a clinic network is not a trusted network."""
    if not is_loopback(config.host) and not config.api_key_file:
        raise ConfigError(
            f"refusing to listen on {config.host}: binding an address other than loopback needs an API key "
            "file (--api-key-file); create one with --add-api-key NAME --api-key-file FILE"
        )
    if config.api_key_file and not os.path.isfile(config.api_key_file):
        raise ConfigError(f"API key file not found: {config.api_key_file}")
    for label, path in (("certificate", config.ssl_certfile), ("certificate key", config.ssl_keyfile)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"TLS {label} file not found: {path}")
