"""The feature-distance domain check: how far an image's pooled block14 features lie from the training lesions.

Why: the probability-based check (top probability, entropy) cannot see a confident mistake -- an acne photo
scored 80% "melanoma" is confident. A photo unlike anything the model was trained on shows up instead as a point
far from the training images in the model's own feature space.

How (:func:`fit_domain_check`):

1. **fit on TRAIN only**: the pooled block14 features (the ``features`` output averaged over h, w) of the train
   split's lesions with a 7-class label (what the classifier was trained on); centre them and keep the top
   ``k`` principal components; the score of an image is its Mahalanobis distance in that subspace,
   ``sqrt(sum_i (z_i^2 / var_i)) / sqrt(k)`` (so a typical training image scores about 1);
2. **calibrate on SELECT**: ``k`` is chosen (from :data:`COMPONENTS`) by the AUROC of non-neoplastic photos
   against lesions on the select split; the threshold is the ``quantile`` (default 95th percentile) of the
   select split's lesion scores, so about 5% of in-domain lesions are flagged by construction;
3. **report on GATE**: the AUROC (non-neoplastic Fitzpatrick17k photos = positive, Fitzpatrick17k lesions =
   negative; also against all lesions of every set) with a bootstrap 95% interval, and the share of each
   flagged at the threshold. ``separates`` says plainly whether it works (AUROC's lower bound >= 0.7).

It returns the card entry (a dict for ``card["domain_check"]``) and writes a ``.domain.npz`` sidecar (mean,
components, variances) that the app reads with numpy only. Torch-free; importable without the model.

``python -m compression.domain FEATURES.npz SPLIT.csv DATA_DIR OUT.domain.npz`` runs it on cached features.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.audit import auroc

#: The card entry's method name (the app's check matches on it).
METHOD = "feature_mahalanobis_pca"
#: Principal components tried; the select split picks one.
COMPONENTS: tuple[int, ...] = (8, 16, 32, 64, 128)
#: Shrinkage added to each component's variance (relative to the mean variance), so a tiny component cannot
#: dominate the distance.
SHRINK = 1e-3
#: Lower bound of the gate AUROC's 95% interval at which the check is said to separate the photos.
SEPARATES_AT = 0.7


def _fit_space(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    xc = x - mean
    # SVD of the centred training features: rows of vt are the principal directions
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(k, vt.shape[0])
    var = (s[:k] ** 2) / max(1, x.shape[0] - 1)
    var = var + SHRINK * float(var.mean())
    return mean.astype(np.float32), vt[:k].astype(np.float32), var.astype(np.float32)


def domain_scores(features: np.ndarray, mean: np.ndarray, components: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """Distance of pooled features (N, C) from the training distribution: Mahalanobis in the PCA subspace,
    divided by sqrt(k). The same formula as :func:`mendicant_desktop.app.quality.feature_distance`."""
    z = (np.asarray(features, np.float64) - mean) @ components.T.astype(np.float64)
    return np.sqrt((z * z / variances).sum(axis=1) / components.shape[0])


def _boot_auroc(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    vals = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        vals.append(auroc(y[idx], s[idx]))
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def fit_domain_check(
    features: np.ndarray,
    split: Sequence[str],
    in_domain: Sequence[bool],
    out_of_scope: Sequence[bool],
    sidecar: str | Path,
    *,
    lesion: Sequence[bool] | None = None,
    fitz_lesion: Sequence[bool] | None = None,
    quantile: float = 0.95,
    components: Sequence[int] = COMPONENTS,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit, calibrate and report the check; write ``sidecar`` (a ``.domain.npz``); return the card entry.

    ``features``: pooled block14 features, one row per record. ``split``: "train"/"select"/"gate" per row.
    ``in_domain``: the lesions the classifier was trained on (a 7-class label) -- the fit uses these rows of the
    train split only. ``out_of_scope``: Fitzpatrick17k's non-neoplastic photos. ``lesion``: every lesion (default:
    ``in_domain``); ``fitz_lesion``: Fitzpatrick17k's benign and malignant photos (the like-for-like negatives).
    """
    x = np.asarray(features, np.float32)
    split = np.asarray(split)
    ind, oos = np.asarray(in_domain, bool), np.asarray(out_of_scope, bool)
    les = ind if lesion is None else np.asarray(lesion, bool)
    fles = les if fitz_lesion is None else np.asarray(fitz_lesion, bool)
    if not (len(x) == len(split) == len(ind) == len(oos) == len(les) == len(fles)):
        raise ValueError("features, split and the masks must have one entry per record")
    train = (split == "train") & ind
    if train.sum() < 50:
        raise ValueError(f"only {int(train.sum())} in-domain train rows: too few to fit the domain check")

    def rows(name: str, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero((split == name) & mask)

    sel_pos, sel_neg = rows("select", oos), rows("select", fles)
    choice = []
    for k in components:
        m, c, v = _fit_space(x[train], k)
        s = domain_scores(x, m, c, v)
        y = np.r_[np.ones(sel_pos.size), np.zeros(sel_neg.size)]
        choice.append((auroc(y, np.r_[s[sel_pos], s[sel_neg]]), k, (m, c, v), s))
    sel_auc, k, (mean, comps, var), s = max(choice, key=lambda t: (np.nan_to_num(t[0], nan=-1), -t[1]))
    threshold = float(np.quantile(s[rows("select", les)], quantile))

    def report(pos: np.ndarray, neg: np.ndarray) -> dict[str, Any]:
        y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
        sc = np.r_[s[pos], s[neg]]
        a = auroc(y, sc)
        lo, hi = _boot_auroc(y, sc, n_boot, seed) if pos.size and neg.size else (float("nan"),) * 2
        return {"auroc": round(float(a), 4), "auroc_ci95": [round(lo, 4), round(hi, 4)], "n_out_of_scope":
                int(pos.size), "n_lesions": int(neg.size),
                "flagged_out_of_scope": round(float((s[pos] >= threshold).mean()), 4) if pos.size else None,
                "flagged_lesions": round(float((s[neg] >= threshold).mean()), 4) if neg.size else None}

    for name in ("select", "gate"):
        if not rows(name, oos).size or not rows(name, fles).size:
            raise ValueError(f"the {name} split needs out-of-scope photos and lesions to calibrate and report on")
    gate_fitz = report(rows("gate", oos), rows("gate", fles))
    gate_all = report(rows("gate", oos), rows("gate", les))
    separates = bool(gate_fitz["auroc_ci95"][0] >= SEPARATES_AT)
    sidecar = Path(sidecar)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    np.savez(sidecar, mean=mean, components=comps, variances=var)
    sha = hashlib.sha256(sidecar.read_bytes()).hexdigest()
    verdict = (
        f"separates Fitzpatrick17k's non-neoplastic photos from its lesions on the gate split: AUROC "
        f"{gate_fitz['auroc']:.3f} (95% CI {gate_fitz['auroc_ci95'][0]:.3f}-{gate_fitz['auroc_ci95'][1]:.3f}); at the "
        f"threshold it flags {gate_fitz['flagged_out_of_scope']:.0%} of them and {gate_fitz['flagged_lesions']:.0%} "
        "of the lesions"
        if separates else
        f"does NOT reliably separate Fitzpatrick17k's non-neoplastic photos from its lesions on the gate split: "
        f"AUROC {gate_fitz['auroc']:.3f} (95% CI {gate_fitz['auroc_ci95'][0]:.3f}-{gate_fitz['auroc_ci95'][1]:.3f}, "
        f"needs a lower bound >= {SEPARATES_AT}); at the threshold it flags {gate_fitz['flagged_out_of_scope']:.0%} "
        f"of them and {gate_fitz['flagged_lesions']:.0%} of the lesions. Its warning is a weak hint, not a filter"
    )
    return {
        "method": METHOD,
        "feature": "features", "pooling": "mean_hw",
        "sidecar": sidecar.name, "sidecar_sha256": sha,
        "n_components": int(comps.shape[0]),
        "threshold": round(threshold, 6),
        "fit": {"split": "train", "n": int(train.sum()), "rows": "lesions with a 7-class label"},
        "calibration": {"split": "select", "quantile": quantile, "auroc_select": round(float(sel_auc), 4),
                        "components_tried": list(components)},
        "gate": {"fitzpatrick17k_lesions": gate_fitz, "all_lesions": gate_all, "separates": separates,
                 "n_boot": n_boot, "seed": seed},
        "summary": "The feature-distance check " + verdict + ".",
    }


def masks_from_split_csv(split_csv: str | Path, data_dir: str | Path) -> dict[str, np.ndarray]:
    """The split and masks from a ship/adapt ``split.csv`` (one row per record, in feature order), with
    Fitzpatrick17k's ``three_partition`` read from its labels file."""
    data_dir = Path(data_dir)
    tp: dict[str, str] = {}
    with (data_dir / "fitzpatrick17k_clinical" / "labels.csv").open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            tp[r["image"]] = r["three_partition"]
    split, ind, oos, les, fles = [], [], [], [], []
    with Path(split_csv).open(encoding="utf-8") as f:
        for r in csv.DictReader(f):
            split.append(r["split"])
            part = tp.get(Path(r["relpath"]).name, "") if r["dataset"] == "fitz" else ""
            ind.append(bool(r["dx7"]))
            oos.append(part == "non-neoplastic")
            les.append(bool(r["dx7"]) or part in ("benign", "malignant"))
            fles.append(part in ("benign", "malignant"))
    return {"split": np.asarray(split), "in_domain": np.asarray(ind), "out_of_scope": np.asarray(oos),
            "lesion": np.asarray(les), "fitz_lesion": np.asarray(fles)}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 4:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    feats, split_csv, data_dir, out = args
    m = masks_from_split_csv(split_csv, data_dir)
    x = np.load(feats)["block14"]
    entry = fit_domain_check(x, m["split"], m["in_domain"], m["out_of_scope"], out, lesion=m["lesion"],
                             fitz_lesion=m["fitz_lesion"])
    print(json.dumps(entry, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
