"""Occlusion-sensitivity benchmark: seconds per image at the default settings with the bundled model.

The GUI's "detailed explanation" runs :class:`mendicant_desktop.core.explain.OcclusionSensitivity` with its
defaults (patch 32, stride 16 on the 254x254 input: 225 positions + 1 unoccluded pass, batches of 16). This
times it on real dermoscopy images when ../shared/data is present (else on a synthetic photo), after one
warm-up image, and also reports the raw forward-pass throughput so other patch/stride settings can be
estimated (time ~ passes / throughput). Compare with the Grad-CAM end-to-end time of engine_benchmark.py.

Run: python benchmarks/occlusion_benchmark.py [--model CARD] [--images 5] [--threads 2] [--patch 32 --stride 16]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mendicant_desktop.core.bundle import ModelBundle  # noqa: E402
from mendicant_desktop.core.explain import OcclusionSensitivity, lesion_masks, region_ranking  # noqa: E402
from mendicant_desktop.core.inference import Engine  # noqa: E402
from mendicant_desktop.core.preprocess import load_image, preprocess  # noqa: E402

SHARED = Path(os.environ.get("MENDICANT_SHARED_DATA", REPO.parent / "shared" / "data"))


def test_images(n: int) -> list[tuple[str, np.ndarray]]:
    labels = SHARED / "isic_dermoscopy" / "labels.csv"
    if labels.is_file():
        with open(labels, newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r["pool"] == "external"]
        rng = np.random.default_rng(0)
        pick = [rows[i] for i in rng.choice(len(rows), size=min(n + 1, len(rows)), replace=False)]
        return [(r["image"], load_image(SHARED / "isic_dermoscopy" / "images" / r["image"])) for r in pick]
    yy, xx = np.mgrid[0:600, 0:800]
    img = np.empty((600, 800, 3), np.float32)
    img[:] = (210, 165, 135)
    img[np.hypot(yy - 300, xx - 400) < 120] = (90, 55, 40)
    return [(f"synthetic{i}", np.clip(img + np.random.default_rng(i).normal(0, 5, img.shape), 0, 255)
             .astype(np.uint8)) for i in range(n + 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model card (default: $MENDICANT_MODEL or bundled)")
    ap.add_argument("--images", type=int, default=5, help="timed images (after one warm-up)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--stride", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    card = args.model or os.environ.get("MENDICANT_MODEL") or None
    engine = Engine(ModelBundle.load(card), threads=args.threads)
    occ = OcclusionSensitivity(engine, patch=args.patch, stride=args.stride, batch_size=args.batch_size)
    imgs = test_images(args.images)
    print(f"model {engine.card.name} {engine.card.version}; {args.threads} threads; patch {args.patch}, stride "
          f"{args.stride}, batch {args.batch_size}: {occ.n_passes()} forward passes per image")
    occ.explain(imgs[0][1])  # warm-up
    times, ranks = [], []
    for name, rgb in imgs[1:]:
        t0 = time.perf_counter()
        res = occ.explain(rgb)
        dt = time.perf_counter() - t0
        times.append(dt)
        lesion, background, kind = lesion_masks(preprocess(rgb))
        d = region_ranking(res.magnitude, lesion, exclude=background) if kind == "lesion-split" else float("nan")
        ranks.append(d)
        print(f"  {name}: {dt:6.2f} s  (malignancy {res.base_score:.3f}, lesion-minus-background |change| {d:+.4f})")
    x = np.repeat(preprocess(imgs[0][1])[None], args.batch_size, axis=0)
    meta = np.zeros((args.batch_size, 10), np.float32)
    meta[:, 2] = meta[:, 7] = meta[:, 9] = 1.0
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        engine.run(x, meta)
    thr = reps * args.batch_size / (time.perf_counter() - t0)
    print(f"occlusion: median {statistics.median(times):.2f} s per image (min {min(times):.2f}, max {max(times):.2f}, "
          f"n={len(times)}); raw throughput {thr:.1f} forward passes/s at batch {args.batch_size}")
    ok = [r for r in ranks if np.isfinite(r)]
    if ok:
        print(f"occlusion sensitivity higher on the lesion than on the background on {sum(r > 0 for r in ok)}/{len(ok)} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
