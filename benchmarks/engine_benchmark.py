"""Engine benchmark: FP32 reference ONNX vs the bundled model, timed in alternating turns in one process.

Batch 1, 2 intra-op threads, spinning off (what the app uses). Prints median and p95 latency and the
ratio, then the end-to-end time per image (decode, preprocess, inference, Grad-CAM) for a 180x180 and a
4000x3000 JPEG. Run: python benchmarks/engine_benchmark.py [--fp32 PATH.onnx] [--runs 60]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mendicant_desktop.core.bundle import ModelBundle  # noqa: E402
from mendicant_desktop.core.inference import Engine, make_session  # noqa: E402
from mendicant_desktop.core.metadata import encode_metadata  # noqa: E402
from mendicant_desktop.core.preprocess import load_image  # noqa: E402

DEFAULT_FP32 = Path(os.environ.get("MENDICANT_FP32_ONNX", Path.home() / ".cache/mendicant/models/reference_fp32.onnx"))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def photo_like_jpeg(w: int, h: int, seed: int = 0) -> bytes:
    """A smooth, skin-coloured JPEG with a dark blob (compresses like a photo, unlike noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    base = np.stack([200 - 90 * (r < 0.15), 150 - 90 * (r < 0.15), 120 - 70 * (r < 0.15)], axis=2)
    img = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, default=DEFAULT_FP32, help="FP32 reference ONNX")
    ap.add_argument("--model", type=Path, default=None, help="card of the model to compare (default: bundled)")
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    bundle = ModelBundle.load(args.model)
    sessions = {f"bundled ({bundle.card.name})": make_session(bundle.model_bytes, args.threads)}
    if args.fp32.is_file():
        sessions = {"fp32 reference": make_session(args.fp32.read_bytes(), args.threads), **sessions}
    else:
        print(f"note: FP32 reference not found at {args.fp32}; timing the bundled model only")
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (1, 254, 254, 3)).astype(np.float32)
    meta = encode_metadata(None)[None]
    feeds = {"image": x, "meta": meta}
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():  # warm-up
        for _ in range(3):
            s.run(None, feeds)
    for _ in range(args.runs):
        for name, s in sessions.items():  # alternate turns so drift hits both equally
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[name].append((time.perf_counter() - t0) * 1000)
    print(f"\nInference latency, batch 1, {args.threads} intra-op threads, spinning off, {args.runs} runs each")
    print(f"{'model':40s} {'median ms':>10s} {'p95 ms':>10s}")
    for name, t in times.items():
        print(f"{name:40s} {statistics.median(t):10.1f} {pct(t, 95):10.1f}")
    if len(times) == 2:
        (na, ta), (nb, tb) = times.items()
        print(f"ratio bundled/fp32: median {statistics.median(tb) / statistics.median(ta):.3f}, "
              f"p95 {pct(tb, 95) / pct(ta, 95):.3f}")
    print(f"bundled model size: {len(bundle.model_bytes) / 1e6:.1f} MB")

    engine = Engine(bundle, threads=args.threads)
    print("\nEnd to end per image (decode + EXIF + preprocess + inference + Grad-CAM), bundled model")
    for w, h in ((180, 180), (4000, 3000)):
        data = photo_like_jpeg(w, h)
        e2e = []
        for i in range(max(5, args.runs // 4) + 2):
            t0 = time.perf_counter()
            rgb = load_image(data)
            engine.predict(rgb, cam=True)
            if i >= 2:
                e2e.append((time.perf_counter() - t0) * 1000)
        print(f"{w}x{h} JPEG ({len(data) / 1e3:.0f} kB): median {statistics.median(e2e):.1f} ms, p95 {pct(e2e, 95):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
