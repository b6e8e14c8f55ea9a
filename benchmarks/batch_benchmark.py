"""Batch-mode benchmark: images/s and peak RSS of ``mendicant-desktop --batch``, and where the time goes.

1. Throughput: the real CLI in a subprocess over ``../shared/data`` (180 px dermoscopy and <= 512 px
   clinical photos), with the bundled model (or ``--model CARD``). Prints images/s and the child's peak RSS.
2. Streaming: the same CLI over ``--rss-inputs`` inputs (default 10,000: symlinks to the shared images
   in a temp folder). Peak RSS must not grow with the number of inputs (target <= 300 MB).
3. Profile: serial per-stage timings (read+hash, decode, preprocess, skin tone, inference per image)
   and a cProfile of the pipeline itself (main thread and decode threads merged).

Run: python benchmarks/batch_benchmark.py [--model CARD] [--threads N] [--batch-size B] [--rss-inputs N]

Writes ``benchmarks/results/batch_benchmark.json``; the figure tables of ``docs/batch.md`` are generated from
it by ``python benchmarks/doc_tables.py`` (never typed by hand; ``tests/test_doc_tables.py`` checks them).
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import hashlib
import io
import json
import os
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = Path(os.environ.get("MENDICANT_SHARED_DATA", REPO.parent / "shared" / "data"))
FOLDERS = ("isic_dermoscopy/images", "pad_ufes20_clinical/images")
RESULTS = REPO / "benchmarks" / "results" / "batch_benchmark.json"

from mendicant_desktop.core.inference import cpu_features  # noqa: E402  (after the sys.path insert)


def run_cli(paths: list[Path], out: Path, card: Path, extra: list[str]) -> tuple[int, float, float, float, str]:
    """Run the CLI; return (exit code, wall s, child peak RSS MB, child CPU s (user+sys), stderr tail)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "mendicant_desktop", "--batch", *map(str, paths), "--out", str(out),
           "--model", str(card), "--quiet", *extra]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        secs = time.perf_counter() - t0
        err.seek(0)
        tail = err.read().decode("utf-8", "replace").strip().splitlines()[-1:]
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, secs, usage.ru_maxrss / 1024.0, cpu, (tail[0] if tail else "")


def report(label: str, n: int, secs: float, rss: float, cpu: float, rc: int, tail: str, load: tuple) -> dict:
    cores = os.cpu_count() or 1
    load_after = os.getloadavg()[0]
    print(f"\n[{label}] {n} images in {secs:.1f} s wall (incl. start-up) = {n / secs:.1f} images/s; "
          f"peak RSS {rss:.0f} MB; exit {rc}")
    if n:
        print(f"    CPU {cpu:.1f} s = {1000 * cpu / n:.1f} ms per image -> {cores * n / cpu:.1f} images/s if the "
              f"{cores} cores were all ours; it got {cpu / secs:.2f} cores on average "
              f"(load average before/after: {load[0]:.1f} / {load_after:.1f})")
    print(f"    {tail}")
    return {"label": label, "images": n, "wall_s": round(secs, 2), "images_per_s": round(n / secs, 2) if secs else None,
            "peak_rss_mb": round(rss, 1), "cpu_s": round(cpu, 2),
            "cpu_ms_per_image": round(1000 * cpu / n, 2) if n else None, "cores_used": round(cpu / secs, 2),
            "load_before": round(load[0], 2), "load_after": round(load_after, 2), "exit": rc}


def rows_in(out: Path) -> int:
    with open(out, "rb") as fh:
        return max(0, fh.read().count(b"\n") - 1)


def stage_timings(files: list[Path], card: Path, threads: int, batch_size: int) -> dict[str, float]:
    """CPU ms per image of each stage of the app layer's scoring path, run serially."""
    import numpy as np

    from mendicant_desktop.app.images import downscale
    from mendicant_desktop.app.model import load_engine
    from mendicant_desktop.app.quality import QUALITY_SIDE, image_warnings
    from mendicant_desktop.core.preprocess import load_image, preprocess
    from mendicant_desktop.core.skintone import estimate_skin_tone

    engine = load_engine(card, threads=threads)
    t = dict.fromkeys(("read+sha256", "decode", "preprocess", "skin tone", "quality checks", "inference"), 0.0)
    xs = []
    for f in files:
        a = time.process_time()
        data = f.read_bytes()
        hashlib.sha256(data).hexdigest()
        b = time.process_time()
        rgb = load_image(data)
        c = time.process_time()
        xs.append(preprocess(rgb, engine.input_size))
        d = time.process_time()
        estimate_skin_tone(rgb)
        e = time.process_time()
        image_warnings(downscale(rgb, QUALITY_SIDE), original_size=rgb.shape[:2])
        f2 = time.process_time()
        t["read+sha256"] += b - a
        t["decode"] += c - b
        t["preprocess"] += d - c
        t["skin tone"] += e - d
        t["quality checks"] += f2 - e
    engine.predict_preprocessed(np.stack(xs[:batch_size]), cam=False)  # warm-up
    a = time.process_time()
    for s in range(0, len(xs), batch_size):
        engine.predict_preprocessed(np.stack(xs[s:s + batch_size]), cam=False)
    t["inference"] = time.process_time() - a
    total = sum(t.values())
    print(f"\nCPU time per stage, serial, on {len(files)} images (process CPU time, so other users' load does "
          f"not inflate it; inference: {threads} ORT threads, batch {batch_size}):")
    for k, v in t.items():
        print(f"  {k:<12} {1000 * v / len(files):7.2f} ms/image  {100 * v / total:5.1f}%")
    cores = os.cpu_count() or 1
    print(f"  {'total':<12} {1000 * total / len(files):7.2f} ms/image  -> at most {cores * len(files) / total:.1f} "
          f"images/s on {cores} idle cores")
    return {k: round(1000 * v / len(files), 2) for k, v in t.items()}


def profile_pipeline(files: list[Path], card: Path, threads: int | None, batch_size: int, top: int) -> None:
    from mendicant_desktop.app import scoring
    from mendicant_desktop.app.model import load_engine as build_engine

    engine = build_engine(str(card), threads)
    profiles: list[cProfile.Profile] = []
    local = threading.local()
    lock = threading.Lock()
    orig = scoring._Preparer.__call__

    def profiled(self, item):
        prof = getattr(local, "prof", None)
        if prof is None:
            prof = local.prof = cProfile.Profile()
            with lock:
                profiles.append(prof)
        prof.enable()
        try:
            return orig(self, item)
        finally:
            prof.disable()

    scoring._Preparer.__call__ = profiled
    main = cProfile.Profile()
    try:
        t0 = time.perf_counter()
        main.enable()
        n = sum(1 for _ in scoring.score_paths(files, engine, batch_size=batch_size, workers=threads))
        main.disable()
        secs = time.perf_counter() - t0
    finally:
        scoring._Preparer.__call__ = orig
    print(f"\ncProfile of score_paths on {n} images: {n / secs:.1f} images/s in-process (profiling slows it)")
    for title, profs in (("main thread (batching + inference + rows)", [main]), ("decode threads, merged", profiles)):
        if not profs:
            continue
        buf = io.StringIO()
        st = pstats.Stats(profs[0], stream=buf)
        for p in profs[1:]:
            st.add(p)
        st.strip_dirs().sort_stats("tottime").print_stats(top)
        print(f"\n--- {title}: top {top} by own time ---")
        lines = buf.getvalue().splitlines()
        start = next((i for i, ln in enumerate(lines) if ln.strip().startswith("ncalls")), 0)
        print("\n".join(ln for ln in lines[start:] if ln.strip()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model card; default the bundled model")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--rss-inputs", type=int, default=10_000, help="inputs for the streaming RSS run (0: skip)")
    ap.add_argument("--profile-images", type=int, default=400, help="images for the profile (0: skip)")
    ap.add_argument("--top", type=int, default=18)
    ap.add_argument("--profile-only", action="store_true", help="skip the two CLI runs")
    args = ap.parse_args()

    from mendicant_desktop.app.model import resolve_card
    from mendicant_desktop.core.errors import ModelVerificationError

    try:
        card = resolve_card(args.model)  # --model > MENDICANT_MODEL > bundled, as the app resolves it
    except ModelVerificationError as exc:
        print(f"{exc}; pass --model CARD", file=sys.stderr)
        return 2
    folders = [args.data / f for f in FOLDERS if (args.data / f).is_dir()]
    if not folders:
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    files = sorted(p for d in folders for p in d.iterdir())
    extra = ["--batch-size", str(args.batch_size)] + (["--threads", str(args.threads)] if args.threads else [])
    from mendicant_desktop.core.bundle import ModelCard

    mc = ModelCard.load(card)
    print(f"model: {mc.name} {mc.version} ({card.name}); cpus: {os.cpu_count()}; "
          f"load average: {os.getloadavg()[0]:.1f}; "
          f"threads: {args.threads or 'default'}; batch size: {args.batch_size}")

    result: dict = {"model": {"name": mc.name, "version": mc.version, "sha256": mc.sha256},
                    "cpus": os.cpu_count(), "cpu_features": cpu_features(), "threads": args.threads or "default",
                    "batch_size": args.batch_size, "runs": []}
    with tempfile.TemporaryDirectory(prefix="mendicant-bench-") as tmp:
        if args.profile_only:
            args.rss_inputs = 0
        tmpd = Path(tmp)
        out = tmpd / "shared.csv"
        if not args.profile_only:
            load = os.getloadavg()
            rc, secs, rss, cpu, tail = run_cli(folders, out, card, extra)
            result["runs"].append(report("../shared/data", rows_in(out), secs, rss, cpu, rc, tail, load))
        if args.rss_inputs:
            links = tmpd / "links"
            links.mkdir()
            for i in range(args.rss_inputs):
                os.symlink(files[i % len(files)], links / f"{i:06d}_{files[i % len(files)].name}")
            out2 = tmpd / "links.csv"
            load = os.getloadavg()
            rc, secs, rss, cpu, tail = run_cli([links], out2, card, extra)
            result["runs"].append(report(f"{args.rss_inputs:,} symlinked inputs", rows_in(out2), secs, rss, cpu, rc,
                                         tail, load))
    if args.profile_images:
        step = max(1, len(files) // args.profile_images)
        sample = files[::step][: args.profile_images]
        result["stage_cpu_ms_per_image"] = stage_timings(sample[:200], card, args.threads or 2, args.batch_size)
        result["stage_images"] = len(sample[:200])
        profile_pipeline(sample, card, args.threads, args.batch_size, args.top)
    if not args.profile_only:
        result["generated_utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"\nwrote {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
