"""The local REST service (``mendicant-desktop --serve``): a third front end on the application layer.

FastAPI and uvicorn come with the ``[server]`` extra. This package never imports Qt, ``gui`` or
``cli`` (import-linter contracts); the command line builds a :class:`ServerConfig` and calls
:func:`mendicant_desktop.server.run.serve`.
"""

from .config import ServerConfig

__all__ = ["ServerConfig"]
