"""Runtime hook: optional hard offline switch.

With ``MENDICANT_BLOCK_NETWORK=1`` every attempt to open a network connection or resolve a host name
raises ``OSError`` ("network access is disabled"). Unix-domain sockets (used by D-Bus/X11 helpers) stay
allowed. The app never uses the network; this switch lets IT prove it, and the frozen smoke test uses it
when it cannot put the process in an isolated network namespace (``unshare -n``). It is off by default.
"""


def _mendicant_offline() -> None:
    import os

    if os.environ.get("MENDICANT_BLOCK_NETWORK", "").strip().lower() not in ("1", "true", "yes", "on"):
        return
    import socket

    def _blocked(*_a, **_k):
        raise OSError("MENDICANT_BLOCK_NETWORK=1: network access is disabled")

    unix = getattr(socket, "AF_UNIX", None)
    orig_init = socket.socket.__init__

    def _init(self, family=-1, type=-1, proto=-1, fileno=None):  # noqa: A002
        fam = socket.AF_INET if family == -1 else family
        if fileno is None and fam != unix:
            raise OSError(f"MENDICANT_BLOCK_NETWORK=1: network access is disabled (socket family {fam})")
        orig_init(self, family, type, proto, fileno)

    socket.socket.__init__ = _init
    socket.create_connection = _blocked
    socket.getaddrinfo = _blocked
    socket.gethostbyname = _blocked
    socket.gethostbyname_ex = _blocked
    socket.gethostbyaddr = _blocked
    os.environ["MENDICANT_NETWORK_BLOCKED"] = "1"


_mendicant_offline()
del _mendicant_offline
