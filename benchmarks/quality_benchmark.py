"""Low-quality warning thresholds, measured: the quality figures on the real images and on degraded copies.

``python benchmarks/quality_benchmark.py [--data ../shared/data] [--degraded-per-set 400]``

Writes ``benchmarks/results/quality_thresholds.json``; ``python benchmarks/doc_tables.py`` then renders its table
into ``docs/gui.md``. No image is written anywhere: the degraded copies live in memory only.

For every image of the three data sets it computes :func:`mendicant_desktop.app.quality.measure_quality` on the
copy the app checks (decode, <= 2048 px, <= 512 px: the chain of ``app.assessment.prepare``). For a fixed, seeded
sample of each set it also degrades the decoded image and measures again:

* blur: a Gaussian blur of sigma = 0.5% / 1% of the longest side (the photo is out of focus);
* exposure: x2^EV in linear light (sRGB decoded, scaled, clipped, re-encoded): +1 / +2 EV, -2 / -3 EV;
* tiny lesion: the whole photo shrunk to 1/4 or 1/8 of its side and set in the middle of a canvas of its own skin
  colour (the median of the skin pixels of ``core.skintone.lesion_skin_masks``; black for a masked crop).

The rule for a threshold (warnings fire below it, or at/above it for clipped white): where thresholds exist that
flag at most :data:`MAX_CLEAN_FLAG` of the clean images of every data set *and* detect at least
:data:`MIN_DETECTION` of the target degradation in every set, the geometric middle of that range (a margin both
ways); where none does, the one that flags :data:`MAX_CLEAN_FLAG` of the clean images (the most it can detect
within that budget). Rounded to 2 significant digits towards fewer clean flags. The target degradation of each warning is fixed in :data:`TARGETS` before any
figure was seen; the milder level is reported beside it. A target detection under :data:`MIN_DETECTION` is
reported as missed, not hidden. ``tests/app/test_quality_thresholds.py`` checks that ``app.quality`` uses the
thresholds in the JSON.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mendicant_desktop.app import quality  # noqa: E402
from mendicant_desktop.app.assessment import PREVIEW_BASE_SIDE  # noqa: E402
from mendicant_desktop.app.images import downscale  # noqa: E402
from mendicant_desktop.core.cpu import int8_cpu_flags  # noqa: E402
from mendicant_desktop.core.preprocess import load_image  # noqa: E402
from mendicant_desktop.core.skintone import lesion_skin_masks  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "quality_thresholds.json"
DEFAULT_DATA = REPO.parent / "shared" / "data"
DATASETS = ("isic_dermoscopy", "pad_ufes20_clinical", "fitzpatrick17k_clinical")
MAX_CLEAN_FLAG = 0.05
MIN_DETECTION = 0.90

#: warning -> (measure, direction, target degradation, milder degradation). "low": fires below the threshold.
TARGETS: dict[str, tuple[str, str, str, str]] = {
    "heavy blur": ("sharpness", "low", "blur 1%", "blur 0.5%"),
    "overexposed": ("clipped_white", "high", "+2 EV", "+1 EV"),
    "underexposed": ("bright_luma", "low", "-3 EV", "-2 EV"),
    "tiny lesion": ("lesion_share", "low", "shrunk 1/8", "shrunk 1/4"),
}
#: The thresholds as they were guessed before this benchmark measured them (kept for the comparison).
GUESSED = {"heavy blur": 12.0, "overexposed": 0.25, "underexposed": 60.0, "tiny lesion": 0.01}
#: The constants of app.quality that hold each threshold.
CONSTANTS = {"heavy blur": "BLUR_VARIANCE", "overexposed": "CLIPPED_WHITE_SHARE", "underexposed": "DARK_P95_LUMA",
             "tiny lesion": "TINY_LESION_SHARE"}


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    x = x / 255.0
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    y = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055)
    return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)


def exposure(rgb: np.ndarray, ev: float) -> np.ndarray:
    return _linear_to_srgb(_srgb_to_linear(rgb.astype(np.float32)) * (2.0 ** ev))


def blur(rgb: np.ndarray, share: float) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(share * max(rgb.shape[:2]))))


def shrunk(rgb: np.ndarray, factor: int, seed: int) -> np.ndarray:
    """The photo at 1/factor of its side in the middle of a canvas of its own skin colour (black if masked)."""
    small = np.asarray(downscale(rgb, 256))
    _lab, _lesion, skin = lesion_skin_masks(small)
    sm = np.asarray(downscale(small, max(skin.shape)))
    colour = np.median(sm[skin], axis=0) if skin.sum() >= 50 else np.zeros(3)
    h, w = rgb.shape[:2]
    rng = np.random.default_rng(seed)
    noise = 3.0 if colour.max() > 20 else 0.0
    canvas = np.clip(colour + rng.normal(0, noise, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(rgb).resize((max(1, w // factor), max(1, h // factor)), Image.Resampling.BOX)
    sh, sw = im.height, im.width
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    canvas[y0:y0 + sh, x0:x0 + sw] = np.asarray(im)
    return canvas


DEGRADATIONS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "blur 0.5%": lambda x, s: blur(x, 0.005),
    "blur 1%": lambda x, s: blur(x, 0.01),
    "+1 EV": lambda x, s: exposure(x, 1.0),
    "+2 EV": lambda x, s: exposure(x, 2.0),
    "-2 EV": lambda x, s: exposure(x, -2.0),
    "-3 EV": lambda x, s: exposure(x, -3.0),
    "shrunk 1/4": lambda x, s: shrunk(x, 4, s),
    "shrunk 1/8": lambda x, s: shrunk(x, 8, s),
}


def measures_of(rgb: np.ndarray) -> dict[str, float | None]:
    """The app's quality figures on the copy the app checks (the chain of ``app.assessment.prepare``)."""
    q = downscale(downscale(rgb, PREVIEW_BASE_SIDE), quality.QUALITY_SIDE)
    m = quality.measure_quality(q, original_size=rgb.shape[:2])
    return {k: getattr(m, k) for k in ("sharpness", "clipped_white", "bright_luma", "lesion_share")}


def _flags(values: list[float | None], direction: str, thr: float) -> list[bool]:
    if direction == "low":
        return [v is not None and v < thr for v in values]
    return [v is not None and v >= thr for v in values]


def _rate(values: list[float | None], direction: str, thr: float) -> float:
    f = _flags(values, direction, thr)
    return sum(f) / len(f) if f else float("nan")


def _round_sig(x: float, direction: str) -> float:
    """``x`` at 2 significant digits, rounded the way that flags fewer clean images."""
    if x <= 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(abs(x))) - 1
    f = (math.floor if direction == "low" else math.ceil)(x / 10 ** e)
    return float(f"{f * 10 ** e:.6g}")


def _clean_limit(clean: dict[str, list[float | None]], direction: str) -> float:
    """The threshold that flags <= MAX_CLEAN_FLAG of the clean images of every set, as close to that as it can."""
    cands = []
    for vals in clean.values():
        if direction == "low":
            v = np.sort(np.array([np.inf if x is None else x for x in vals], dtype=np.float64))
            cands.append(float(np.quantile(v, MAX_CLEAN_FLAG, method="inverted_cdf")))
        else:
            v = np.sort(np.array([-np.inf if x is None else x for x in vals], dtype=np.float64))
            cands.append(max(float(np.quantile(v, 1 - MAX_CLEAN_FLAG, method="higher")), 1e-4))
    thr = _round_sig(min(cands) if direction == "low" else max(cands), direction)
    # the rounding or ties may still flag a little over the limit: step towards fewer flags until it does not
    for _ in range(200):
        if all(_rate(vals, direction, thr) <= MAX_CLEAN_FLAG for vals in clean.values()):
            break
        thr = _round_sig(thr * (0.98 if direction == "low" else 1.02), direction)
    return thr


def _detection_limit(target: dict[str, list[float | None]], direction: str) -> float | None:
    """The threshold nearest to flagging nothing that still detects >= MIN_DETECTION of the target in every set
    (None: no threshold does)."""
    cands = []
    for vals in target.values():
        v = np.array([x for x in vals if x is not None], dtype=np.float64)
        need = math.ceil(MIN_DETECTION * len(vals))  # a None (no lesion found) is never detected
        if v.size < need or need == 0:
            return None
        v = np.sort(v)
        # low: v < thr for `need` values -> just above the need-th smallest; high: v >= thr for the need largest
        cands.append(float(np.nextafter(v[need - 1], np.inf)) if direction == "low" else float(v[v.size - need]))
    return max(cands) if direction == "low" else min(cands)


def choose(clean: dict[str, list[float | None]], target: dict[str, list[float | None]],
           direction: str) -> tuple[float, str]:
    """(threshold, how it was chosen).

    Where some threshold both flags <= MAX_CLEAN_FLAG of every set's clean images and detects >= MIN_DETECTION of
    every set's target degradation, the geometric middle of that range (a margin on both sides); else the
    clean-image limit (the most it can detect within the clean-flag budget)."""
    hi = _clean_limit(clean, direction)
    lo = _detection_limit(target, direction)
    feasible = lo is not None and (lo <= hi if direction == "low" else lo >= hi)
    if not feasible:
        return hi, "clean-flag limit (no threshold meets both targets)"
    mid = math.sqrt(lo * hi) if lo > 0 and hi > 0 else (lo + hi) / 2
    thr = _round_sig(mid, direction)
    return thr, "middle of the range meeting both targets"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _percentiles(vals: list[float | None]) -> dict[str, float | None]:
    v = np.array([x for x in vals if x is not None], dtype=np.float64)
    if not v.size:
        return {}
    return {f"p{p}": float(np.percentile(v, p)) for p in (1, 5, 10, 50, 90, 95, 99)}


def run(data: Path, per_set: int, seed: int = 15) -> dict[str, Any]:
    t0 = time.perf_counter()
    commit = _git_commit()  # the code measured: taken at the start
    measure_names = sorted({m for m, *_ in TARGETS.values()})
    clean: dict[str, dict[str, list[float | None]]] = {m: {} for m in measure_names}
    degraded: dict[str, dict[str, dict[str, list[float | None]]]] = {d: {m: {} for m in measure_names}
                                                                     for d in DEGRADATIONS}
    counts: dict[str, dict[str, int]] = {}
    for ds in DATASETS:
        with open(data / ds / "labels.csv", newline="", encoding="utf-8") as fh:
            names = [r["image"] for r in csv.DictReader(fh)]
        rng = np.random.default_rng(seed)
        sample = set(rng.choice(len(names), size=min(per_set, len(names)), replace=False).tolist())
        for m in measure_names:
            clean[m][ds] = []
            for d in DEGRADATIONS:
                degraded[d][m][ds] = []
        unreadable = 0
        for i, name in enumerate(names):
            try:
                rgb = load_image(data / ds / "images" / name)
            except Exception:  # noqa: BLE001 - a data set's unreadable file is counted, not fatal
                unreadable += 1
                continue
            for m, v in measures_of(rgb).items():
                clean[m][ds].append(v)
            if i in sample:
                for d, fn in DEGRADATIONS.items():
                    for m, v in measures_of(fn(rgb, seed + i)).items():
                        degraded[d][m][ds].append(v)
        counts[ds] = {"images": len(names) - unreadable, "degraded_sample": len(sample), "unreadable": unreadable}
        print(f"{ds}: {counts[ds]} ({time.perf_counter() - t0:.0f} s)", flush=True)

    warnings: dict[str, Any] = {}
    for w, (m, direction, target, milder) in TARGETS.items():
        thr, how = choose(clean[m], degraded[target][m], direction)
        prev = GUESSED[w]
        per: dict[str, Any] = {}
        for ds in DATASETS:
            per[ds] = {
                "clean_flag_rate": _rate(clean[m][ds], direction, thr),
                "detection": {d: _rate(degraded[d][m][ds], direction, thr) for d in (target, milder)},
                "clean_flag_rate_at_previous": _rate(clean[m][ds], direction, prev),
                "detection_at_previous": {d: _rate(degraded[d][m][ds], direction, prev) for d in (target, milder)},
                "clean_percentiles": _percentiles(clean[m][ds]),
                "target_percentiles": _percentiles(degraded[target][m][ds]),
            }
        warnings[w] = {
            "measure": m, "direction": direction, "target": target, "milder": milder, "threshold": thr, "chosen_by": how,
            "constant": CONSTANTS[w], "app_threshold_when_run": getattr(quality, CONSTANTS[w]),
            "previous_threshold": prev, "per_dataset": per,
            "target_met": all(per[ds]["detection"][target] >= MIN_DETECTION for ds in DATASETS),
        }
    return {
        "generated_utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit,
        "script": "benchmarks/quality_benchmark.py",
        "cpu_features": int8_cpu_flags(),
        "max_clean_flag": MAX_CLEAN_FLAG,
        "min_detection": MIN_DETECTION,
        "seed": seed,
        "datasets": counts,
        "warnings": warnings,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--degraded-per-set", type=int, default=400)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    res = run(args.data, args.degraded_per_set)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    for w, r in res["warnings"].items():
        print(f"{w}: threshold {r['threshold']:g} (was {r['previous_threshold']:g}); " + "; ".join(
            f"{ds[:4]} clean {p['clean_flag_rate']:.1%} target {p['detection'][r['target']]:.1%} "
            f"milder {p['detection'][r['milder']]:.1%}" for ds, p in r["per_dataset"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
