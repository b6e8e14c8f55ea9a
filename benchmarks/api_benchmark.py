"""Load benchmark of ``mendicant-desktop --serve``: Locust (headless) against a server on loopback.

1. Concurrency: 1, 5, 10, 20 and 50 closed-loop users (no think time) POSTing real images from
   ``../shared/data`` to /predict for ``--seconds`` each (after all users have started): throughput,
   p50/p95/p99 latency, error rate, and the mean ONNX Runtime batch size read from /metrics.
2. Batching on (the default 10 ms window) against off (window 0): two servers, each level run on one and
   then straight away on the other, so both see the same load from the machine's other users.
3. Stress: ``--stress`` requests (default 10,000) with ``--stress-users`` users, batching on; the server's RSS
   is sampled every 0.5 s (psutil) to show whether memory stays flat.

The server runs in a subprocess with the bundled model (or ``--model``); Locust runs in another on the same
machine, so it takes some of the CPU too. Writes ``benchmarks/results/api.json`` and then regenerates the docs'
tables (``benchmarks/doc_tables.py`` renders docs/api.md's from it; never edit that table by hand).

Run: python benchmarks/api_benchmark.py [--seconds 15] [--users 1,5,10,20,50] [--stress 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MENDICANT_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "benchmarks" / "results" / "api.json"
LOCUSTFILE = Path(__file__).with_name("api_locustfile.py")
#: The design's targets on a 2-core machine.
TARGETS = {"throughput_rps": 10.0, "p50_ms": 100.0, "p95_ms": 200.0, "p99_ms": 500.0}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_images(n_isic: int = 48, n_pad: int = 16) -> list[Path]:
    """Real images: dermoscopy (180 px) and clinical photos (<= 512 px), sorted names, first of each."""
    isic = sorted((DATA / "isic_dermoscopy" / "images").glob("*.jpg"))[:n_isic]
    pad = sorted((DATA / "pad_ufes20_clinical" / "images").glob("*.jpg"))[:n_pad]
    if not isic:
        raise SystemExit(f"no images under {DATA}; set MENDICANT_SHARED_DATA")
    return isic + pad


class Server:
    def __init__(self, window_ms: float, card: str | None, threads: int | None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mendicant_desktop", "--serve", "--port", str(self.port),
               "--batch-window-ms", str(window_ms), "--rate-limit", "100000000"]
        if card:
            cmd += ["--model", card]
        if threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the server never became ready")
            time.sleep(0.2)

    def batch_counts(self) -> tuple[float, float]:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            text = r.read().decode()

        def value(name: str) -> float:
            m = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
            return float(m.group(1)) if m else 0.0

        return value("mendicant_inference_batch_images_sum"), value("mendicant_inference_batch_images_count")

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def percentile(hist: dict[str, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of Locust's response-time histogram (ms, rounded as Locust stores them)."""
    items = sorted((float(k), int(v)) for k, v in hist.items())
    n = sum(v for _, v in items)
    if n == 0:
        return None
    need, seen = q * n, 0
    for ms, count in items:
        seen += count
        if seen >= need:
            return ms
    return items[-1][0]


def run_locust(server: Server, users: int, seconds: float, images_file: Path, stop_after: int = 0,
               reset: bool = True) -> dict[str, Any]:
    """One headless Locust run; the figures come from its final JSON stats (every completed request)."""
    with tempfile.TemporaryDirectory() as tmp:
        stats_prefix = os.path.join(tmp, "stats")  # Locust appends ".json"
        env = dict(os.environ, MENDICANT_BENCH_IMAGES=str(images_file), MENDICANT_BENCH_STOP_AFTER=str(stop_after))
        spawn = max(1.0, users / 5.0)  # seconds to start every user
        # the run lasts for the spawn ramp plus the measured part; --reset-stats drops the ramp from the stats
        # (not in the stress run, which counts every request it sends)
        cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", server.url,
               "-u", str(users), "-r", str(users / spawn), "--run-time", f"{int(spawn + seconds + 1)}s",
               *(["--reset-stats"] if reset else []), "--json-file", stats_prefix, "--only-summary",
               "--loglevel", "WARNING", "--stop-timeout", "30"]
        before = server.batch_counts()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=seconds * 4 + 900)
        wall = time.perf_counter() - t0
        after = server.batch_counts()
        try:
            entries = json.loads(Path(stats_prefix + ".json").read_text())
        except (OSError, ValueError):
            raise SystemExit(f"locust wrote no stats: {proc.stderr[-2000:]}") from None
    e = next(x for x in entries if x["name"] == "/predict")
    n, fails = int(e["num_requests"]), int(e["num_failures"])
    span = float(e["last_request_timestamp"]) - float(e["start_time"])
    hist = e["response_times"]
    batches = after[1] - before[1]
    return {
        "users": users, "requests": n, "failures": fails, "error_rate": fails / n if n else None,
        "throughput_rps": n / span if span > 0 else None, "p50_ms": percentile(hist, 0.50),
        "p95_ms": percentile(hist, 0.95), "p99_ms": percentile(hist, 0.99),
        "mean_ms": e["total_response_time"] / n if n else None, "max_ms": e["max_response_time"],
        "mean_batch": (after[0] - before[0]) / batches if batches else None, "wall_s": round(wall, 1),
        "locust_rc": proc.returncode,
    }


def met(level: dict[str, Any]) -> dict[str, bool]:
    return {
        "throughput_rps": level["throughput_rps"] > TARGETS["throughput_rps"],
        "p50_ms": level["p50_ms"] < TARGETS["p50_ms"], "p95_ms": level["p95_ms"] < TARGETS["p95_ms"],
        "p99_ms": level["p99_ms"] < TARGETS["p99_ms"],
    }


def level(server: Server, users: int, seconds: float, images_file: Path, label: str) -> dict[str, Any]:
    res = run_locust(server, users, seconds, images_file)
    res["targets_met"] = met(res)
    log(f"batching {label}, {users:>2} users: {res['throughput_rps']:.1f} req/s, p50 {res['p50_ms']:.0f} ms, "
        f"p95 {res['p95_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, errors {res['failures']}, "
        f"mean batch {res['mean_batch'] or 0:.2f}")
    return res


def stress(server: Server, n: int, users: int, images_file: Path) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(server.proc.pid)
    samples: list[tuple[float, float]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sample() -> None:
        while not stop.is_set():
            try:
                samples.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))
            except psutil.Error:
                return
            stop.wait(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        res = run_locust(server, users, 3600, images_file, stop_after=n, reset=False)
    finally:
        stop.set()
        th.join(5)
    rss = [r for _, r in samples]
    k = max(1, len(rss) // 10)
    res.update(
        rss_start_mb=round(sum(rss[:k]) / k, 1), rss_end_mb=round(sum(rss[-k:]) / k, 1), rss_max_mb=round(max(rss), 1),
        rss_samples=len(rss), rss_series=[[round(t, 1), round(r, 1)] for t, r in samples[:: max(1, len(samples) // 60)]],
    )
    res["rss_growth_mb"] = round(res["rss_end_mb"] - res["rss_start_mb"], 1)
    log(f"stress: {res['requests']} requests, {res['failures']} errors, {res['throughput_rps']:.1f} req/s, RSS "
        f"{res['rss_start_mb']} -> {res['rss_end_mb']} MB (max {res['rss_max_mb']})")
    return res


def update_docs() -> None:
    """Regenerate the docs' tables from the JSON (``benchmarks/doc_tables.py``: docs/api.md's among them)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("doc_tables", Path(__file__).with_name("doc_tables.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main([])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=15.0, help="measured seconds per concurrency level")
    ap.add_argument("--users", default="1,5,10,20,50")
    ap.add_argument("--off-users", default=None, help="levels with batching off (default: the same as --users)")
    ap.add_argument("--stress", type=int, default=10_000, help="requests in the stress run (0: skip)")
    ap.add_argument("--stress-users", type=int, default=10)
    ap.add_argument("--window-ms", type=float, default=10.0, help="the batching window of the 'on' runs")
    ap.add_argument("--model", help="model card (default: the bundled model)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import onnxruntime

    from mendicant_desktop.app import load_engine
    from mendicant_desktop.core.cpu import int8_cpu_flags as cpu_features

    card = load_engine(args.model).card
    users = [int(u) for u in args.users.split(",")]
    off_users = [int(u) for u in (args.off_users or args.users).split(",")]
    images = pick_images()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(map(str, images)))
        images_file = Path(fh.name)
    res: dict[str, Any] = {"meta": {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(), "platform": platform.platform(terse=True), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "model": card.name, "model_sha256": card.sha256,
        "images": len(images), "image_mix": "48 ISIC dermoscopy 180 px, 16 PAD-UFES-20 clinical <= 512 px",
        "seconds": args.seconds, "window_ms": args.window_ms, "load_before": [round(v, 2) for v in os.getloadavg()],
        "shared_machine": True, "targets": TARGETS, "stress_users": args.stress_users,
    }, "levels": {}}
    t_start = time.monotonic()
    # Both servers are up at once (an idle one costs no CPU), and each level runs with batching on and then off
    # straight after, so the comparison sees the same load from the machine's other users.
    servers = {"on": Server(args.window_ms, args.model, args.threads), "off": Server(0.0, args.model, args.threads)}
    res["levels"] = {"on": [], "off": []}
    try:
        for u in sorted(set(users) | set(off_users)):
            for label, wanted in (("on", users), ("off", off_users)):
                if u in wanted:
                    res["levels"][label].append(level(servers[label], u, args.seconds, images_file, label))
        if args.stress:
            servers["off"].stop()
            res["stress"] = stress(servers["on"], args.stress, args.stress_users, images_file)
    finally:
        for server in servers.values():
            server.stop()
        images_file.unlink()
    res["meta"]["load_after"] = [round(v, 2) for v in os.getloadavg()]
    res["meta"]["total_s"] = round(time.monotonic() - t_start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    if args.out == RESULTS:
        update_docs()
    log(f"wrote {args.out} ({res['meta']['total_s']} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
