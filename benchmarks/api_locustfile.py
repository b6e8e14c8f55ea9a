"""Locust user for ``benchmarks/api_benchmark.py``: POST /predict with real images, no think time.

Configured through the environment (the benchmark sets it): ``MENDICANT_BENCH_IMAGES`` is a file listing
image paths (read into memory once), ``MENDICANT_BENCH_STOP_AFTER`` (optional) stops the run once that many
requests have completed (the stress run), ``MENDICANT_BENCH_KEY`` (optional) is sent as ``X-API-Key``.
"""

from __future__ import annotations

import itertools
import os
import threading
from pathlib import Path

import gevent
from locust import HttpUser, constant, events, task
from locust.exception import StopUser

_PATHS = [Path(p) for p in Path(os.environ["MENDICANT_BENCH_IMAGES"]).read_text().splitlines() if p.strip()]
_IMAGES = [(p.name, p.read_bytes()) for p in _PATHS]
_NEXT = itertools.cycle(range(len(_IMAGES)))
_STOP_AFTER = int(os.environ.get("MENDICANT_BENCH_STOP_AFTER", "0") or 0)
_KEY = os.environ.get("MENDICANT_BENCH_KEY")
_lock = threading.Lock()
_sent = 0
_done = 0
_quitting = False


class PredictUser(HttpUser):
    wait_time = constant(0)  # closed loop: each user sends its next request as soon as one is answered

    @task
    def predict(self) -> None:
        global _sent, _done, _quitting
        with _lock:
            if _quitting:
                raise StopUser()
            _sent += 1
            name, data = _IMAGES[next(_NEXT)]
        headers = {"X-API-Key": _KEY} if _KEY else {}
        with self.client.post("/predict", files={"image": (name, data, "image/jpeg")}, headers=headers,
                              name="/predict", catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
            elif resp.json().get("status") != "ok":
                resp.failure("status not ok")
        with _lock:
            _done += 1
            if _STOP_AFTER and _done >= _STOP_AFTER and not _quitting:
                # every request counted so far has completed; quit from a greenlet of its own (quitting inside
                # a user's task would kill the caller first). Requests still in flight are not counted.
                _quitting = True
                gevent.spawn(self.environment.runner.quit)


@events.quitting.add_listener
def _report_sent(environment, **kwargs) -> None:
    print(f"requests sent: {_sent}")
