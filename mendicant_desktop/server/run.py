"""Start uvicorn on a :class:`ServerConfig` (called by ``mendicant-desktop --serve``; no argparse here)."""

from __future__ import annotations

import os

from .accesslog import log_config
from .config import CONFIG_ENV, ServerConfig, check_bind


def app_from_env():
    """The uvicorn factory for worker processes: the config comes as JSON in :data:`CONFIG_ENV`."""
    from .app import create_app

    return create_app(ServerConfig.from_env())


def serve(config: ServerConfig) -> None:
    """Check the bind rule and the key file, then serve until SIGINT/SIGTERM (uvicorn handles both).

    Raises :class:`~mendicant_desktop.core.errors.ConfigError` for a refused bind or an unreadable key file.
    """
    import uvicorn

    from .auth import KeyStore

    check_bind(config)
    KeyStore.load(config.api_key_file)  # fail now, with the reason, rather than in every worker
    common = dict(host=config.host, port=config.port, log_config=log_config(config.log_level),
                  log_level=config.log_level, access_log=False, server_header=False, proxy_headers=False,
                  ssl_certfile=config.ssl_certfile, ssl_keyfile=config.ssl_keyfile, timeout_graceful_shutdown=10)
    if config.workers > 1:
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run(f"{__name__}:app_from_env", factory=True, workers=config.workers, **common)
    else:
        from .app import create_app

        uvicorn.run(create_app(config), **common)
