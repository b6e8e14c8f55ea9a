"""Fit the skin-type model of :mod:`mendicant_desktop.core.skintone` on Fitzpatrick17k's train split.

``python -m compression.skintone_fit [--data ../shared/data] [--out resources/skintone/fst_colour_logreg.json]``

- **Split** (:func:`fitzpatrick_split`): by ``duplicate_group``, never by image: a group goes to validation when
  ``sha256("mendicant-fst-split-v1:" + group)`` read as an integer is below 30% of its range (modulo 100 < 30).
  Seeded by the salt, stable across machines and Python versions, and the same rule in the benchmark.
- **Fit**: only train images with an annotator FST (column ``fst``). Standardise, then a multinomial logistic
  regression (L2, C = 0.03) with sample weights (n_max / n_type) ** 0.5 (half-way to balanced: the rare types
  V-VI are not swamped by II, without making I-II photos drift dark). Chosen by 5-fold grouped cross-validation
  *within train* (recorded in the JSON); the validation split is never looked at here.
- **"Too mixed"**: the out-of-fold posterior spread (standard deviation in types) on train; the rule abstains
  above its 90th percentile.
- **"Too little skin"**: fixed rules, not tuned (border ring < 10% skin-coloured or frame < 10%), and a masked
  crop (more than half of the border ring mask-black, :data:`~mendicant_desktop.core.skintone.MASK_BLACK`).

sklearn is used here only; the app reads the stored JSON with numpy. Per-image features are cached under
``.cache/skintone/`` (git-ignored) keyed by the image bytes' sha256 and the sha256 of the code that computes
them (core/skintone.py, core/preprocess.py), so a code change never reads a stale feature.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import hashlib
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mendicant_desktop.core import preprocess as _preprocess
from mendicant_desktop.core import skintone as _skintone
from mendicant_desktop.core.skintone import (
    FEATURE_VERSION,
    FST_TYPES,
    SkinFeatures,
    feature_names,
    skin_features,
)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DATASET = "fitzpatrick17k_clinical"
SPLIT_SALT = "mendicant-fst-split-v1:"
VALIDATION_PERCENT = 30
C = 0.03
WEIGHT_POWER = 0.5
SPREAD_QUANTILE = 0.93
MIN_SKIN_FRACTION = 0.10
MIN_SKIN_SHARE = 0.10
MAX_BACKGROUND_FRACTION = 0.5
CACHE_DIR = REPO / ".cache" / "skintone"


def fitzpatrick_split(duplicate_group: str) -> str:
    """'train' or 'validation' for a Fitzpatrick17k ``duplicate_group`` (deterministic, seeded by the salt)."""
    h = int(hashlib.sha256((SPLIT_SALT + duplicate_group).encode("utf-8")).hexdigest(), 16)
    return "validation" if h % 100 < VALIDATION_PERCENT else "train"


def parse_fst_label(v: str | None) -> int | None:
    """'1'..'6' (the labels.csv form) -> 1..6; empty or anything else -> None."""
    v = (v or "").strip()
    return int(v) if v in {"1", "2", "3", "4", "5", "6"} else None


@dataclass(frozen=True)
class Item:
    image: Path
    group: str
    fst: int | None
    fst_second: int | None
    split: str


def read_items(data: Path) -> list[Item]:
    root = Path(data) / DATASET
    with open(root / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [Item(root / "images" / r["image"], r["duplicate_group"], parse_fst_label(r.get("fst")),
                 parse_fst_label(r.get("fst_second_annotator")), fitzpatrick_split(r["duplicate_group"]))
            for r in rows]


def code_version() -> str:
    """sha256 over the feature code (the cache key's code part)."""
    h = hashlib.sha256(FEATURE_VERSION.encode())
    for mod in (_skintone, _preprocess):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:16]


def features_for(path: Path, cache_dir: Path | None = CACHE_DIR, version: str | None = None) -> SkinFeatures:
    """:func:`skin_features` of one image file, through the cache (key: image bytes' sha256 + code version)."""
    raw = Path(path).read_bytes()
    key = hashlib.sha256(raw).hexdigest()
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / (version or code_version()) / f"{key}.npz"
        if cache.is_file():
            z = np.load(cache)
            ita = float(z["ita"]) if np.isfinite(z["ita"]) else None
            return SkinFeatures(z["vector"], float(z["skin_fraction"]), float(z["skin_share"]),
                                float(z["background_fraction"]), ita, float(z["masked_fraction"]))
    rgb = _preprocess.load_image(raw)
    f = skin_features(rgb)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npz")
        np.savez(tmp, vector=f.vector, skin_fraction=f.skin_fraction, skin_share=f.skin_share,
                 background_fraction=f.background_fraction, ita=np.nan if f.ita is None else f.ita,
                 masked_fraction=f.masked_fraction)
        tmp.replace(cache)
    return f


def all_features(items: list[Item], cache_dir: Path | None = CACHE_DIR) -> list[SkinFeatures]:
    version = code_version()
    return [features_for(it.image, cache_dir, version) for it in items]


def passes_skin_rules(f: SkinFeatures) -> bool:
    return (f.masked_fraction <= MAX_BACKGROUND_FRACTION and f.skin_fraction >= MIN_SKIN_FRACTION
            and f.skin_share >= MIN_SKIN_SHARE)


def git_commit(short: bool = False) -> str:
    """The checkout's HEAD commit (empty when git is unavailable): the provenance of fitted and measured files."""
    try:
        args = ["rev-parse", "--short", "HEAD"] if short else ["rev-parse", "HEAD"]
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def fit(data: Path, cache_dir: Path | None = CACHE_DIR) -> dict:
    """Fit on the train split and return the JSON-able model (never reads validation labels)."""
    import sklearn
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    items = [it for it in read_items(data) if it.split == "train" and it.fst is not None]
    feats = all_features(items, cache_dir)
    X = np.stack([f.vector for f in feats])
    y = np.array([it.fst for it in items])
    groups = np.array([it.group for it in items])
    counts = np.bincount(y, minlength=7)[1:]
    weights = (counts.max() / counts) ** WEIGHT_POWER
    sw = weights[y - 1]

    def pipe():
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))

    oof = cross_val_predict(pipe(), X, y, groups=groups, cv=GroupKFold(5), method="predict_proba",
                            params={"logisticregression__sample_weight": sw})
    spreads, ks = [], []
    for p in oof:
        k, _, _, s = _skintone.decide(p)
        spreads.append(s)
        ks.append(k + 1)
    ok = np.array([passes_skin_rules(f) for f in feats])
    max_spread = float(np.quantile(np.array(spreads)[ok], SPREAD_QUANTILE))
    ks = np.array(ks)
    keep = ok & (np.array(spreads) <= max_spread)
    cv = {"n": int(len(y)), "unknown_share": float(1 - keep.mean()),
          "exact": float((ks[keep] == y[keep]).mean()),
          "within_one": float((np.abs(ks[keep] - y[keep]) <= 1).mean())}

    model = pipe().fit(X, y, logisticregression__sample_weight=sw)
    scaler, lr = model.named_steps["standardscaler"], model.named_steps["logisticregression"]
    assert tuple(int(c) for c in lr.classes_) == (1, 2, 3, 4, 5, 6)
    return {
        "format": "mendicant-skintone-logreg/1",
        "feature_version": FEATURE_VERSION,
        "feature_names": list(feature_names()),
        "classes": list(FST_TYPES),
        "mean": scaler.mean_.tolist(),
        "scale": scaler.scale_.tolist(),
        "coef": lr.coef_.tolist(),
        "intercept": lr.intercept_.tolist(),
        "decision": "posterior mean over I..VI (0..5) rounded to a type",
        "unknown_rules": {"max_spread": max_spread, "min_skin_fraction": MIN_SKIN_FRACTION,
                          "min_skin_share": MIN_SKIN_SHARE, "max_background_fraction": MAX_BACKGROUND_FRACTION},
        "provenance": {
            "data": f"{DATASET}/labels.csv, column fst (first annotator), train split only",
            "split": f"duplicate_group -> validation when int(sha256('{SPLIT_SALT}' + group), 16) % 100 < "
                     f"{VALIDATION_PERCENT}",
            "n_train": int(len(y)), "train_counts": {t: int(n) for t, n in zip(FST_TYPES, counts)},
            "estimator": f"StandardScaler + LogisticRegression(C={C}, L2, lbfgs), sample weight "
                         f"(n_max/n_type)**{WEIGHT_POWER}",
            "spread_rule": f"{SPREAD_QUANTILE:.0%} quantile of the out-of-fold posterior spread on train",
            "train_cv_5fold_grouped": cv,
            "sklearn": sklearn.__version__,
            "code_commit": git_commit(),
            "fitted": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "resources" / "skintone" / "fst_colour_logreg.json")
    ap.add_argument("--no-cache", action="store_true")
    a = ap.parse_args(argv)
    d = fit(a.data, None if a.no_cache else CACHE_DIR)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(d, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {a.out}: n_train {d['provenance']['n_train']}, train CV {d['provenance']['train_cv_5fold_grouped']}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
