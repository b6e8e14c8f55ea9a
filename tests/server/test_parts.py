"""The server's parts on their own: config and bind rule, key file, rate limit, batcher, job queue."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mendicant_desktop.core.errors import CancelledError, ConfigError
from mendicant_desktop.server.auth import KeyStore, add_key, hash_key
from mendicant_desktop.server.batcher import DynamicBatcher
from mendicant_desktop.server.config import ServerConfig, check_bind, is_loopback
from mendicant_desktop.server.jobs import CANCELLED, DONE, FAILED, JobQueue, JobStoreFull
from mendicant_desktop.server.ratelimit import RateLimiter


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.5.0.1", True), ("::1", True),
                                           ("localhost", True), ("0.0.0.0", False), ("192.168.1.10", False),
                                           ("::", False)])
def test_loopback_detection(host, expected):
    assert is_loopback(host) is expected


def test_non_loopback_bind_without_key_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="refusing to listen on 0.0.0.0.*API key file"):
        check_bind(ServerConfig(host="0.0.0.0"))
    check_bind(ServerConfig(host="127.0.0.1"))  # loopback without keys is fine
    keys = tmp_path / "keys"
    add_key(keys, "pacs")
    check_bind(ServerConfig(host="0.0.0.0", api_key_file=str(keys)))
    with pytest.raises(ConfigError, match="API key file not found"):
        check_bind(ServerConfig(host="0.0.0.0", api_key_file=str(tmp_path / "missing")))


@pytest.mark.parametrize("kwargs,match", [
    ({"batch_window_ms": 150}, "0-100 ms"), ({"port": 0}, "port"), ({"rate_limit_per_minute": 0}, "rate limit"),
    ({"ssl_certfile": "c.pem"}, "both"), ({"cors_origins": ("example.org",)}, "http"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ServerConfig(**kwargs)


def test_config_round_trips_through_json():
    c = ServerConfig(port=9001, cors_origins=("https://ehr.clinic.local",), batch_window_ms=5)
    assert ServerConfig.from_json(c.to_json()) == c
    assert ServerConfig(batch_window_ms=0).batching is False and c.batching is True


# ------------------------------------------------------------------ keys
def test_key_file_stores_only_hashes_and_verifies(tmp_path):
    path = tmp_path / "keys.txt"
    k1 = add_key(path, "pacs-viewer")
    k2 = add_key(path, "ehr")
    text = path.read_text()
    assert k1 not in text and k2 not in text
    assert f"pacs-viewer:{hash_key(k1)}" in text
    assert (path.stat().st_mode & 0o777) == 0o600
    store = KeyStore.load(path)
    assert store.verify(k1) == "pacs-viewer" and store.verify(k2) == "ehr"
    assert store.verify(k1[:-1]) is None and store.verify("") is None and store.verify(None) is None
    with pytest.raises(ConfigError, match="already has a key"):
        add_key(path, "ehr")


def test_key_file_with_a_raw_key_is_refused(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# comment\nsecret-raw-key\n")
    with pytest.raises(ConfigError, match="line 2.*NAME:SHA256HEX"):
        KeyStore.load(path)
    path.write_text("# only comments\n")
    with pytest.raises(ConfigError, match="holds no keys"):
        KeyStore.load(path)


def test_verify_compares_every_entry(monkeypatch):
    """No early exit: a match on the first entry still compares the rest (constant work per request)."""
    import hmac

    calls = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: calls.append(1) or real(a, b))
    store = KeyStore(tuple((f"k{i}", hash_key(f"key{i}")) for i in range(5)))
    assert store.verify("key0") == "k0"
    assert len(calls) == 5


# ------------------------------------------------------------------ rate limit
def test_rate_limit_bucket_refills_and_says_when():
    now = [0.0]
    rl = RateLimiter(60, clock=lambda: now[0])  # one token a second, bursts of 60
    assert all(rl.acquire("a") is None for _ in range(60))
    assert rl.acquire("a") == 1.0
    assert rl.acquire("b") is None  # per identity
    now[0] += 1.0
    assert rl.acquire("a") is None
    assert rl.acquire("a") == 1.0
    rl2 = RateLimiter(6, clock=lambda: now[0])  # a token every 10 s
    for _ in range(6):
        assert rl2.acquire("x") is None
    assert rl2.acquire("x") == 10.0


# ------------------------------------------------------------------ batcher
class _CountingEngine:
    """Records the batch sizes the batcher hands it; 'prediction' i is the image's first pixel value."""

    input_size = (4, 4)

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[int, tuple]] = []
        self.delay = delay
        self.lock = threading.Lock()

    def predict_preprocessed(self, x, metadata, **options):
        with self.lock:
            self.calls.append((x.shape[0], tuple(sorted(options.items()))))
        time.sleep(self.delay)
        if options.get("explode"):
            raise RuntimeError("boom")
        return [float(x[i, 0, 0, 0]) for i in range(x.shape[0])]


def _burst(batcher, values, **options):
    out: dict[int, object] = {}

    def one(v):
        try:
            out[v] = batcher.predict_preprocessed(np.full((1, 4, 4, 3), v, np.float32), [None], **options)
        except Exception as exc:
            out[v] = exc

    threads = [threading.Thread(target=one, args=(v,)) for v in values]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return out


def test_batcher_merges_concurrent_calls_and_returns_each_its_own():
    eng = _CountingEngine()
    sizes = []
    b = DynamicBatcher(eng, window_s=0.1, max_batch=8, on_batch=sizes.append)
    try:
        out = _burst(b, range(6))
    finally:
        b.close()
    assert out == {v: [float(v)] for v in range(6)}
    assert sum(n for n, _ in eng.calls) == 6
    assert max(n for n, _ in eng.calls) > 1, eng.calls  # 6 threads within 100 ms: merged
    assert sorted(sizes) == sorted(n for n, _ in eng.calls)


def test_batcher_never_exceeds_max_batch_and_keeps_options_apart():
    eng = _CountingEngine(delay=0.02)
    b = DynamicBatcher(eng, window_s=0.05, max_batch=3)
    try:
        out_a = _burst(b, range(7), cam=False)
        out_b = _burst(b, range(10, 14), cam=True, cam_target="top")
    finally:
        b.close()
    assert out_a == {v: [float(v)] for v in range(7)}
    assert out_b == {v: [float(v)] for v in range(10, 14)}
    assert all(n <= 3 for n, _ in eng.calls)
    assert {opts for _, opts in eng.calls} == {(("cam", False),), (("cam", True), ("cam_target", "top"))}


def test_batcher_off_is_a_pass_through_and_errors_reach_every_caller():
    eng = _CountingEngine()
    off = DynamicBatcher(eng, window_s=0.0, max_batch=8)
    assert not off.enabled and off.input_size == (4, 4)  # other attributes are the engine's
    assert off.predict_preprocessed(np.zeros((2, 4, 4, 3), np.float32), None) == [0.0, 0.0]
    on = DynamicBatcher(eng, window_s=0.05, max_batch=8)
    try:
        out = _burst(on, range(3), explode=True)
        assert all(isinstance(v, RuntimeError) for v in out.values())
        assert _burst(on, [5]) == {5: [5.0]}  # the batching thread survived
    finally:
        on.close()


def test_with_arrival_tracking_a_lone_call_does_not_wait_and_announced_ones_merge():
    eng = _CountingEngine()
    b = DynamicBatcher(eng, window_s=0.09, max_batch=8, track_arrivals=True)
    try:
        t0 = time.perf_counter()
        with b.arriving():
            assert b.predict_preprocessed(np.full((1, 4, 4, 3), 7, np.float32), [None]) == [7.0]
        assert time.perf_counter() - t0 < 0.05  # nothing else on its way: no 90 ms wait
        with b.arriving():
            pass  # announced but never reached the model (a bad image): must not hold the window open
        assert b._arriving == 0
        go = threading.Barrier(5)
        out: dict[int, list] = {}

        def one(v):
            with b.arriving():
                go.wait()
                time.sleep(0.005 * v)  # "decoding" of different lengths, all well inside the window
                out[v] = b.predict_preprocessed(np.full((1, 4, 4, 3), v, np.float32), [None])

        threads = [threading.Thread(target=one, args=(v,)) for v in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert out == {v: [float(v)] for v in range(5)}
        assert [n for n, _ in eng.calls] == [1, 5], eng.calls  # the lone call, then the five together
    finally:
        b.close()


# ------------------------------------------------------------------ jobs
def _wait(q, job_id, states, timeout=10.0):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        job = q.get(job_id)
        if job is not None and job.state in states:
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached {states}")


def test_jobs_run_report_progress_fail_and_cancel():
    q = JobQueue(max_jobs=4, ttl_s=60)
    gate = threading.Event()
    try:
        def slow(progress, cancel):
            for i in range(100):
                if cancel.is_set():
                    raise CancelledError("stop")
                progress(i + 1, 100)
                gate.wait(0.01)
            return {"ok": True}

        a = q.submit("test", slow)
        b = q.submit("test", lambda p, c: {"n": 1})  # queued behind a
        c = q.submit("test", lambda p, c: 1 / 0)
        assert q.cancel(b.id).state == CANCELLED  # queued: cancelled at once
        _wait(q, a.id, {"running"})
        q.cancel(a.id)
        assert _wait(q, a.id, {CANCELLED}).result is None
        failed = _wait(q, c.id, {FAILED})
        assert "ZeroDivisionError" in failed.error
        d = q.submit("test", lambda p, c: (p(1, 1), {"v": 2})[1])
        done = _wait(q, d.id, {DONE})
        assert done.snapshot()["result"] == {"v": 2} and done.snapshot()["progress"] == {"done": 1, "total": 1}
        with pytest.raises(JobStoreFull):
            q.submit("test", lambda p, c: {})
        assert q.cancel("nope") is None and q.get("nope") is None
    finally:
        q.close()


def test_finished_jobs_expire():
    now = [1000.0]
    q = JobQueue(max_jobs=1, ttl_s=5, clock=lambda: now[0])
    try:
        j = q.submit("t", lambda p, c: {})
        _wait(q, j.id, {DONE})
        now[0] += 6
        assert q.get(j.id) is None
        q.submit("t", lambda p, c: {})  # the slot is free again
    finally:
        q.close()
