"""Per-key rate limit: a token bucket per API key (or per client address when keys are off).

A bucket holds up to ``per_minute`` tokens and refills at ``per_minute / 60`` tokens a second, so a
client may burst up to its minute's allowance and then goes on at the steady rate. A request that
finds the bucket empty is refused with the whole seconds until the next token (``Retry-After``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable


class RateLimiter:
    """Thread-safe token buckets keyed by client identity. ``clock`` is injectable for tests."""

    #: Buckets untouched this long are full again anyway and are dropped, so memory stays bounded.
    IDLE_DROP_S = 120.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # identity -> (tokens, last time)
        self._lock = threading.Lock()
        self._last_sweep = clock()

    def acquire(self, identity: str) -> float | None:
        """Take one token for ``identity``: None when allowed, else seconds until a token is free (>= 1)."""
        now = self._clock()
        with self._lock:
            self._sweep(now)
            tokens, last = self._buckets.get(identity, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[identity] = (tokens - 1.0, now)
                return None
            self._buckets[identity] = (tokens, now)
            return float(max(1, math.ceil((1.0 - tokens) / self.rate)))

    def _sweep(self, now: float) -> None:
        if now - self._last_sweep < self.IDLE_DROP_S:
            return
        self._last_sweep = now
        stale = [k for k, (_, last) in self._buckets.items() if now - last > self.IDLE_DROP_S]
        for k in stale:
            del self._buckets[k]
