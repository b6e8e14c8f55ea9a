"""The server's entry points for the command line: start uvicorn on a :class:`ServerConfig`, add an API key.

``mendicant-desktop --serve`` (``cli/serve.py``, which owns argparse) receives this module from
``mendicant_desktop.__main__`` and calls :func:`serve` or :func:`add_key`; the server has no argparse.
"""

from __future__ import annotations

import os

from .accesslog import log_config
from .auth import KeyStore, add_key
from .config import CONFIG_ENV, MAX_BATCH_WINDOW_MS, ServerConfig, check_bind

__all__ = ["MAX_BATCH_WINDOW_MS", "ServerConfig", "add_key", "app_from_env", "serve"]


def app_from_env():
    """The uvicorn factory for worker processes: the config comes as JSON in :data:`CONFIG_ENV`."""
    from .app import create_app

    return create_app(ServerConfig.from_env())


def serve(config: ServerConfig) -> None:
    """Check the bind rule and the key file, then serve until SIGINT/SIGTERM (uvicorn handles both).

    Raises :class:`~mendicant_desktop.core.errors.ConfigError` for a refused bind or an unreadable key file, and
    :class:`~mendicant_desktop.core.errors.ModelVerificationError` when there is no usable model card.
    """
    import uvicorn

    from mendicant_desktop.app.model import load_card

    check_bind(config)
    load_card(config.model)  # a missing or malformed card fails now; the model itself is verified as it loads
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
