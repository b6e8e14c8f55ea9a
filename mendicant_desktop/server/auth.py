"""API keys: stored hashed in a key file, sent as ``X-API-Key``, compared in constant time.

Key file format (UTF-8 text, one key per line, ``#`` starts a comment)::

    # name:sha256-hex-of-the-key
    pacs-viewer:3f1a...e9

Only the SHA-256 of each key is stored, so a copied key file does not reveal the keys. Keys are long
random tokens (:func:`new_key`, 256 bits), for which a fast hash is enough; a slow password hash
would only add latency to every request. :meth:`KeyStore.verify` compares the presented key's hash
with every stored hash using :func:`hmac.compare_digest` and never stops early, so response time does
not tell how much of a key matched or which entry it was.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from mendicant_desktop.core.errors import ConfigError

HEADER = "X-API-Key"
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key (43 URL-safe characters, 256 bits)."""
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class KeyStore:
    """The configured keys as (name, sha256) pairs. Empty means authentication is off (loopback only)."""

    entries: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.entries)

    @classmethod
    def load(cls, path: str | os.PathLike | None) -> KeyStore:
        if path is None:
            return cls()
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {p}: {exc.strerror or exc}") from None
        entries: list[tuple[str, str]] = []
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            name, sep, digest = line.rpartition(":")
            digest = digest.strip().lower()
            name = name.strip()
            if not sep or not _NAME.match(name) or not _HEX.match(digest):
                raise ConfigError(f"{p} line {n}: expected NAME:SHA256HEX (64 hex digits), not a raw key")
            entries.append((name, digest))
        if not entries:
            raise ConfigError(f"the API key file {p} holds no keys")
        names = [name for name, _ in entries]
        if len(set(names)) != len(names):
            raise ConfigError(f"{p}: a key name appears twice")
        return cls(tuple(entries))

    def verify(self, presented: str | None) -> str | None:
        """The name of the key that matches ``presented``, else None. Constant time in the key's content."""
        if not presented:
            return None
        digest = hash_key(presented)
        match: str | None = None
        for name, stored in self.entries:  # every entry is compared: no early exit
            if hmac.compare_digest(digest, stored):
                match = name
        return match


def add_key(path: str | os.PathLike, name: str) -> str:
    """Append a new key named ``name`` to the key file (created 0600 if missing); return the key itself.

    The key is shown once, to the operator; only its hash is written.
    """
    if not _NAME.match(name):
        raise ConfigError("key names are 1-64 letters, digits or _ . @ -")
    p = Path(path)
    if p.exists():
        existing = KeyStore.load(p) if p.read_text(encoding="utf-8").strip() else KeyStore()
        if name in {n for n, _ in existing.entries}:
            raise ConfigError(f"{p} already has a key named {name!r}")
    key = new_key()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(f"{name}:{hash_key(key)}\n")
    return key
