"""The out-of-scope check: does a photo look like the skin lesions the model was trained on?

Why: the model answers for every photo, and a photo of a rash or of acne gets a confident, meaningless answer
(an acne photo scored 80% "melanoma"). The probabilities cannot show that, so the card's ``domain_check`` looks at
the network's own features instead.

What was tried first, and why it is gone: the *distance* of an image's pooled features from the training lesions'
(Mahalanobis in a PCA subspace, calibrated on the select split) does **not** work: non-neoplastic Fitzpatrick17k
photos lie no farther from the training lesions than Fitzpatrick17k's own lesions (gate AUROC 0.405 on the
adapted model's cached features; :func:`mahalanobis_baseline` measures it again on the features below, and
``benchmarks/results/domain_check.json`` holds that figure). An unsupervised distance finds "clinical photo vs
dermoscopy", not "lesion vs rash".

What ships (:func:`fit_logistic_domain_check`, method :data:`METHOD`): a supervised L2 logistic regression on
pooled block14 features (the ``features`` output averaged over h, w: what the app passes as ``pooled`` to
``app.quality.domain_warnings``), standardised. The app computes them with the shipped INT8 model, whose block14
differs from the FP32 reference network's (on the adapted model the INT8 pooled block14 is ~60% off in relative
norm), and a check fitted on FP32 features alone loses much of its power on INT8 ones. So with the model to ship
(:func:`domain_check_for_ship`'s ``int8_path``) the fit uses both its own and the FP32 features, and C, the
threshold and the gate figures are measured on its own; without it, on the FP32 reference's:

1. **fit on TRAIN only**: positives are Fitzpatrick17k photos whose ``three_partition`` is "non-neoplastic"
   (rashes, acne, eczema, ...); negatives are every lesion (ISIC, PAD-UFES-20, Fitzpatrick17k benign and
   malignant); ``class_weight="balanced"``;
2. **choose on SELECT only**: ``C`` from :data:`C_GRID` by the select split's AUROC (Fitzpatrick17k non-neoplastic
   vs Fitzpatrick17k lesions, the like-for-like question); the threshold is the ``quantile`` (default 95th
   percentile) of the select split's lesion scores, so about 5% of in-scope lesions are flagged by construction;
3. **report on GATE**: that AUROC with a stratified bootstrap 95% interval, the same against every lesion, and the
   share flagged at the threshold of non-neoplastic photos and of each data set's lesions. ``separates`` says
   plainly whether it works (the interval's lower bound >= :data:`SEPARATES_AT`).

The score is ``sigmoid(((pooled - mean) / scale) . coef + intercept)``; the ``.domain.npz`` sidecar holds
``mean``, ``scale``, ``coef`` and ``intercept`` (float64) and the app computes it with numpy only
(``mendicant_desktop.app.quality.out_of_scope_score``, the same formula as :func:`logistic_scores`).

``python -m compression.domain --out-dir DIR [--int8 MODEL]`` fits it on the configured split (cached features) and writes
``DIR/<name>.domain.npz`` and ``DIR/<name>.domain.json`` (the card entry); ``--results`` also writes the figures
the docs are generated from (``benchmarks/results/domain_check.json``). The ship stage calls
:func:`domain_check_for_ship`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.audit import auroc

#: The card entry's method name (``app.quality`` matches on it).
METHOD = "feature_logistic"
#: What the check reads, in the card's words.
FEATURES = "pooled block14 (features output averaged over h, w)"
#: The tap of :data:`compression.adapt.TAPS` whose pooled activations equal the app's ``pooled``.
TAP = "block14"
#: Inverse L2 strengths tried; the select split picks one.
C_GRID: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
#: Share of select-split lesions that score below the threshold.
QUANTILE = 0.95
#: Lower bound of the gate AUROC's 95% interval at which the check is said to separate the photos.
SEPARATES_AT = 0.7
#: A standardising scale below this (a constant training feature) is raised to it.
SCALE_FLOOR = 1e-6
#: Where ``--results`` writes the figures the docs are generated from.
RESULTS_JSON = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "domain_check.json"
#: Data sets whose lesions are counted separately in the flagged shares.
DATASETS = {"isic": ("isic_lesions", "ISIC dermoscopy"), "pad": ("pad_lesions", "PAD-UFES-20"),
            "fitz": ("fitzpatrick17k_lesions", "Fitzpatrick17k")}

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Labels and scores
# --------------------------------------------------------------------------------------------------


def scope_labels(records: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(out_of_scope, lesion, dataset)`` per record: Fitzpatrick17k's non-neoplastic photos; every lesion (ISIC,
    PAD, Fitzpatrick17k benign or malignant); the data set name. A record that is neither is in no mask."""
    oos, les, ds = [], [], []
    for r in records:
        part = (r.extra or {}).get("three_partition") if r.dataset == "fitz" else None
        oos.append(part == "non-neoplastic")
        les.append(part in ("benign", "malignant") if r.dataset == "fitz" else True)
        ds.append(r.dataset)
    return np.asarray(oos, bool), np.asarray(les, bool), np.asarray(ds)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-z) without overflow (the app's ``quality`` uses the same expression)."""
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, np.float64)))


def logistic_scores(features: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                    intercept: float | np.ndarray) -> np.ndarray:
    """Out-of-scope scores in (0, 1) of pooled features (N, C): the formula of
    :func:`mendicant_desktop.app.quality.out_of_scope_score`."""
    z = ((np.asarray(features, np.float64) - mean) / scale) @ np.asarray(coef, np.float64)
    return sigmoid(z + float(np.asarray(intercept, np.float64).reshape(-1)[0]))


def load_sidecar(path: str | Path) -> dict[str, np.ndarray]:
    with np.load(Path(path)) as z:
        return {k: z[k].astype(np.float64) for k in ("mean", "scale", "coef", "intercept")}


def _boot_auroc(y: np.ndarray, s: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """95% percentile interval of a stratified bootstrap (positives and negatives resampled separately)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    vals = [auroc(y[idx], s[idx]) for idx in
            (np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)]) for _ in range(n_boot))]
    lo, hi = np.nanpercentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


def _auroc_entry(s: np.ndarray, pos: np.ndarray, neg: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    y = np.r_[np.ones(pos.size), np.zeros(neg.size)]
    sc = np.r_[s[pos], s[neg]]
    lo, hi = _boot_auroc(y, sc, n_boot, seed)
    return {"auroc": round(auroc(y, sc), 4), "auroc_ci95": [round(lo, 4), round(hi, 4)],
            "n_out_of_scope": int(pos.size), "n_lesions": int(neg.size)}


def _flagged(s: np.ndarray, rows: np.ndarray, threshold: float) -> dict[str, Any]:
    k = int((s[rows] >= threshold).sum())
    return {"n": int(rows.size), "flagged": k, "share": round(k / rows.size, 4) if rows.size else None}


# --------------------------------------------------------------------------------------------------
# The fit
# --------------------------------------------------------------------------------------------------


def _gate_report(s: np.ndarray, split: np.ndarray, oos: np.ndarray, les: np.ndarray, ds: np.ndarray,
                 threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    def rows(mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero((split == "gate") & mask)

    flagged = {"fitzpatrick17k_non_neoplastic": _flagged(s, rows(oos), threshold)}
    for d, (key, _) in DATASETS.items():
        if rows(les & (ds == d)).size:
            flagged[key] = _flagged(s, rows(les & (ds == d)), threshold)
    flagged["all_lesions"] = _flagged(s, rows(les), threshold)
    return {"fitzpatrick17k": _auroc_entry(s, rows(oos), rows(les & (ds == "fitz")), n_boot, seed),
            "all_lesions": _auroc_entry(s, rows(oos), rows(les), n_boot, seed), "flagged": flagged}


def fit_logistic_domain_check(
    features: np.ndarray,
    records: Sequence[Any],
    split: Sequence[str],
    sidecar: str | Path,
    *,
    fp32_features: np.ndarray | None = None,
    c_grid: Sequence[float] = C_GRID,
    quantile: float = QUANTILE,
    n_boot: int = 1000,
    seed: int = 0,
    provenance: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit on train, choose ``C`` and the threshold on select, report on gate; write ``sidecar`` (a
    ``.domain.npz``); return the card entry (``card["domain_check"]``).

    ``features``: pooled block14 features, one row per record (:data:`FEATURES`), as the app will compute them:
    the shipped model's own (its INT8 backbone's) when there is one. ``fp32_features``: optionally the FP32
    reference network's for the same records: their train rows join the fit (so the check holds on either) and
    the gate is also reported on them (``gate_fp32_reference``); C, the threshold and ``gate`` are always
    measured on ``features``. ``records``: objects with ``dataset`` and ``extra["three_partition"]``
    (``compression.data.Record``). ``split``: "train", "select" or "gate" per record. ``provenance`` is added
    to the entry's ``trained_on`` (split manifest, feature cache keys). Every figure is computed from the
    arrays as written to the sidecar, with :func:`logistic_scores`."""
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(features, np.float64)
    x32 = None if fp32_features is None else np.asarray(fp32_features, np.float64)
    split = np.asarray(split)
    oos, les, ds = scope_labels(records)
    if not (x.ndim == 2 and len(x) == len(split) == len(oos)) or (x32 is not None and x32.shape != x.shape):
        raise ValueError("features (N, C), fp32_features, records and split must have one entry per record")

    def rows(name: str, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero((split == name) & mask)

    fitz = ds == "fitz"
    train = (split == "train") & (oos | les)
    for name in ("train", "select", "gate"):
        if rows(name, oos).size < 10 or rows(name, les & fitz).size < 10:
            raise ValueError(f"the {name} split has too few Fitzpatrick17k non-neoplastic photos or lesions "
                             f"({rows(name, oos).size} and {rows(name, les & fitz).size}; at least 10 each)")
    x_fit, y_fit = x[train], oos[train]
    if x32 is not None:
        x_fit, y_fit = np.r_[x_fit, x32[train]], np.r_[y_fit, oos[train]]
    mean = x_fit.mean(axis=0)
    scale = np.maximum(x_fit.std(axis=0), SCALE_FLOOR)
    z_fit = (x_fit - mean) / scale
    sel_pos, sel_neg = rows("select", oos), rows("select", les & fitz)
    y_sel = np.r_[np.ones(sel_pos.size), np.zeros(sel_neg.size)]
    z_sel = (x[np.r_[sel_pos, sel_neg]] - mean) / scale
    tried = []
    for c in c_grid:
        clf = LogisticRegression(C=float(c), class_weight="balanced", max_iter=5000).fit(z_fit, y_fit)
        tried.append((auroc(y_sel, clf.decision_function(z_sel)), float(c), clf))
    sel_auc, c, clf = max(tried, key=lambda t: (np.nan_to_num(t[0], nan=-1.0), -t[1]))
    sidecar = Path(sidecar)
    sidecar.parent.mkdir(parents=True, exist_ok=True)
    np.savez(sidecar, mean=mean, scale=scale, coef=clf.coef_[0].astype(np.float64),
             intercept=np.asarray(clf.intercept_, np.float64).reshape(1))
    sha = hashlib.sha256(sidecar.read_bytes()).hexdigest()
    params = load_sidecar(sidecar)  # the stored arrays: what the app computes
    s = logistic_scores(x, **params)
    threshold = float(np.quantile(s[rows("select", les)], quantile))
    gate = _gate_report(s, split, oos, les, ds, threshold, n_boot, seed)
    lo, hi = gate["fitzpatrick17k"]["auroc_ci95"]
    separates = bool(lo >= SEPARATES_AT)
    fl = gate["flagged"]
    figures = (f"gate AUROC {gate['fitzpatrick17k']['auroc']:.3f} (95% CI {lo:.3f}-{hi:.3f}, "
               f"{gate['fitzpatrick17k']['n_out_of_scope']} non-neoplastic photos vs "
               f"{gate['fitzpatrick17k']['n_lesions']} lesions); at the threshold it flags "
               f"{fl['fitzpatrick17k_non_neoplastic']['share']:.0%} of the non-neoplastic photos and "
               f"{fl['fitzpatrick17k_lesions']['share']:.0%} of Fitzpatrick17k's lesions")
    others = [f"{fl[key]['share']:.0%} of {label}'s" for key, label in (DATASETS["isic"], DATASETS["pad"]) if key in fl]
    if others:
        figures += f" ({', '.join(others)} lesions)"
    on = "the model's own (INT8) features" if x32 is not None else "the FP32 reference network's features"
    summary = (
        f"On {on}, the out-of-scope check separates Fitzpatrick17k's non-neoplastic photos (rashes, acne, ...) "
        f"from its lesions: {figures}. It misses the rest of them: a photo without the warning is not proven in "
        "scope."
        if separates else
        f"On {on}, the out-of-scope check does NOT reliably separate Fitzpatrick17k's non-neoplastic photos from "
        f"its lesions: {figures} (it needs a lower bound >= {SEPARATES_AT}). Its warning is a weak hint, not a "
        "filter."
    )
    entry: dict[str, Any] = {
        "method": METHOD,
        "features": FEATURES,
        "sidecar": sidecar.name,
        "sidecar_sha256": sha,
        "threshold": threshold,
        "score": "sigmoid(((pooled - mean) / scale) . coef + intercept); warn when >= threshold",
        "trained_on": {
            "split": "train",
            "positives": "Fitzpatrick17k photos with three_partition 'non-neoplastic'",
            "negatives": "every lesion: ISIC dermoscopy, PAD-UFES-20, Fitzpatrick17k benign and malignant",
            "n_positive": int((train & oos).sum()), "n_negative": int((train & les).sum()),
            "feature_sets": (["the model's own (INT8 backbone)", "the FP32 reference network's"] if x32 is not None
                             else ["the FP32 reference network's"]),
            "model": "L2 logistic regression (scikit-learn, lbfgs, class_weight balanced) on standardised "
                     "features (the training rows' mean and standard deviation)",
            **dict(provenance or {}),
        },
        "calibration": {
            "split": "select", "c": c, "c_grid": [float(v) for v in c_grid],
            "select_auroc_by_c": {f"{v:g}": round(float(a), 4) for a, v, _ in tried},
            "select_auroc": round(float(sel_auc), 4), "quantile": quantile,
            "threshold_rule": f"the {quantile:.0%} quantile of the select split's lesion scores (every data set)",
        },
        "gate": {
            **gate, "measured_on": on, "separates": separates,
            "separates_rule": f"lower bound of the Fitzpatrick17k AUROC's 95% CI >= {SEPARATES_AT}",
            "n_boot": n_boot, "seed": seed,
        },
        "summary": summary,
    }
    if x32 is not None:
        entry["gate_fp32_reference"] = {**_gate_report(logistic_scores(x32, **params), split, oos, les, ds, threshold,
                                                       n_boot, seed),
                                        "measured_on": "the FP32 reference network's features, same threshold"}
    return entry


# --------------------------------------------------------------------------------------------------
# The distance it replaces (measured, not shipped)
# --------------------------------------------------------------------------------------------------

#: Principal components the distance baseline tries; the select split picks one.
COMPONENTS: tuple[int, ...] = (8, 16, 32, 64, 128)


def mahalanobis_scores(x: np.ndarray, train_rows: np.ndarray, components: Sequence[int]) -> list[np.ndarray]:
    """Mahalanobis distance in the top-``k`` principal subspace of ``x[train_rows]``, over sqrt(k), for each ``k``
    of ``components`` (one SVD)."""
    mean = x[train_rows].mean(axis=0)
    _, sv, vt = np.linalg.svd(x[train_rows] - mean, full_matrices=False)
    proj = (x - mean) @ vt[: max(components)].T
    out = []
    for k in components:
        k = min(k, vt.shape[0])
        var = sv[:k] ** 2 / max(1, train_rows.size - 1)
        var = var + 1e-3 * float(var.mean())
        out.append(np.sqrt((proj[:, :k] ** 2 / var).sum(axis=1) / k))
    return out


def mahalanobis_baseline(features: np.ndarray, records: Sequence[Any], split: Sequence[str], *,
                         components: Sequence[int] = COMPONENTS, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """The feature-distance check that this module replaced, on the same features and split: fitted on the train
    split's lesions, ``k`` chosen on select, gate AUROC (Fitzpatrick17k non-neoplastic vs lesions) with its CI."""
    x = np.asarray(features, np.float64)
    split = np.asarray(split)
    oos, les, ds = scope_labels(records)
    fitz = ds == "fitz"
    train = np.flatnonzero((split == "train") & les)
    sel = np.r_[np.flatnonzero((split == "select") & oos), np.flatnonzero((split == "select") & les & fitz)]
    y_sel = oos[sel].astype(int)
    tried = [(auroc(y_sel, s[sel]), k, s) for k, s in zip(components, mahalanobis_scores(x, train, components))]
    sel_auc, k, s = max(tried, key=lambda t: (np.nan_to_num(t[0], nan=-1.0), -t[1]))
    gate = _auroc_entry(s, np.flatnonzero((split == "gate") & oos), np.flatnonzero((split == "gate") & les & fitz),
                        n_boot, seed)
    return {"method": "feature_mahalanobis_pca (replaced)", "n_components": int(k),
            "select_auroc_by_k": {str(kk): round(float(a), 4) for a, kk, _ in tried},
            "select_auroc": round(float(sel_auc), 4), "gate_fitzpatrick17k": gate,
            "separates": bool(gate["auroc_ci95"][0] >= SEPARATES_AT)}


# --------------------------------------------------------------------------------------------------
# On the configured split with the cached features (ship stage, CLI)
# --------------------------------------------------------------------------------------------------


def _features(sd: Any, fp32_path: str | Path, cache_dir: str | Path, log: Log, threads: int) -> Any:
    from .adapt import extract_features

    return extract_features(fp32_path, sd.records, sd.shared, cache_dir, view="id", threads=threads, log=log)


def cached_reference_features(sd: Any, fp32_path: str | Path, cache_dir: str | Path) -> Any | None:
    """The reference features of every record when ``cache_dir`` already holds them (a cache hit of
    ``compression.adapt.extract_features``, whose key it checks), else None: never extracts (10+ minutes)."""
    from .adapt import feature_cache_key

    key = feature_cache_key(hashlib.sha256(Path(fp32_path).read_bytes()).hexdigest(),
                            [r.sha256 for r in sd.records], "id")
    if not (Path(cache_dir) / f"features_id_{key[:16]}.npz").is_file():
        return None
    return _features(sd, fp32_path, cache_dir, lambda _: None, 1)


def model_features(sd: Any, int8_path: str | Path, cache_dir: str | Path, log: Log = print, *,
                   threads: int = 2) -> tuple[np.ndarray, list[str]]:
    """An adapted model's own pooled block14 for every record (``pool_model`` graph: equal to the app's
    ``features`` output averaged over h, w), and the cache keys. Extracted in two parts, the train rows (the
    part the adapt stage's INT8-aware fit caches) and the select + gate rows, so either cache is reused."""
    from .adapt import extract_features, pool_model

    out = np.zeros((len(sd.records), 0))
    keys = []
    parts = [sd.rows("train"), np.r_[sd.rows("select"), sd.rows("gate")]]
    for rows in parts:
        f = extract_features(int8_path, sd.records, sd.shared, cache_dir, view="id", rows=rows, graph=pool_model,
                             threads=threads, log=log)
        if out.shape[1] == 0:
            out = np.full((len(sd.records), f.pools[TAP].shape[1]), np.nan)
        out[rows] = f.pools[TAP]
        keys.append(f.key)
    return out, keys


def domain_check_for_ship(sd: Any, fp32_path: str | Path, cache_dir: str | Path, out_dir: str | Path, name: str,
                          log: Log = print, *, int8_path: str | Path | None = None, threads: int = 2,
                          n_boot: int = 1000) -> dict[str, Any]:
    """The card's ``domain_check`` entry for a model named ``name``; writes ``out_dir/<name>.domain.npz``.

    ``sd``: ``compression.adapt.load_split(cfg)``. ``fp32_path``: the reference network in FP32
    (``compression.adapt.reference_fp32()``, whose pooled block14 the adapt stage caches). ``cache_dir``: the
    adapt stage's feature cache (``runs/adapt-cache``; the key covers the model, every image, the code and the
    CPU). ``int8_path``: the model being shipped (its INT8 backbone's features are what the app scores, and
    they differ from the FP32 reference's): when given, the fit also uses its features, and C, the threshold and
    the gate figures are measured on them (about 5 minutes of extraction on 2 cores the first time; cached).
    The sidecar must travel with the card (its sha256 is in the entry)."""
    t0 = time.time()
    feats = _features(sd, fp32_path, cache_dir, log, threads)
    prov: dict[str, Any] = {"split_manifest_sha256": sd.sha256, "feature_cache_key": feats.key,
                            "reference_fp32_sha256": hashlib.sha256(Path(fp32_path).read_bytes()).hexdigest()}
    x, x32 = feats.pools[TAP], None
    if int8_path is not None:
        x32 = x
        x, keys = model_features(sd, int8_path, cache_dir, log, threads=threads)
        prov |= {"model_sha256": hashlib.sha256(Path(int8_path).read_bytes()).hexdigest(),
                 "model_feature_cache_keys": keys}
    entry = fit_logistic_domain_check(x, sd.records, sd.split, Path(out_dir) / f"{name}.domain.npz",
                                      fp32_features=x32, n_boot=n_boot, provenance=prov)
    log(f"domain: {entry['summary']} ({time.time() - t0:.0f} s)")
    return entry


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compression.domain",
                                 description="Fit the out-of-scope check on the configured split (cached features).")
    ap.add_argument("--out-dir", required=True, help="where <name>.domain.npz and <name>.domain.json go")
    ap.add_argument("--name", help="the model name (default: the config's [ship] name)")
    ap.add_argument("--config", help="compression config (default: compression/config.toml)")
    ap.add_argument("--cache-dir", help="feature cache (default: <runs_dir>/adapt-cache)")
    ap.add_argument("--int8", help="the adapted INT8 model to be shipped: fit and measure on its own features too")
    ap.add_argument("--model-note", default="", help="what the --int8 model is, for the docs (e.g. 'not shipped yet')")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--results", nargs="?", const=str(RESULTS_JSON), default=None,
                    help=f"also write the doc figures (with the replaced distance's) to this JSON (default "
                         f"{RESULTS_JSON.relative_to(RESULTS_JSON.parents[2])})")
    args = ap.parse_args(argv)
    from mendicant_desktop.core.cpu import cpu_features, describe_cpu

    from .adapt import load_split, reference_fp32
    from .config import load_config

    cfg = load_config(args.config)
    sd = load_split(cfg)
    fp32 = reference_fp32()
    cache = Path(args.cache_dir) if args.cache_dir else Path(cfg.run_dir()).parent / "adapt-cache"
    name = args.name or cfg.ship.name
    out = Path(args.out_dir)
    entry = domain_check_for_ship(sd, fp32, cache, out, name, int8_path=args.int8, n_boot=args.n_boot,
                                  threads=cfg.run.threads)
    (out / f"{name}.domain.json").write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(entry, indent=2))
    if args.results:
        feats = _features(sd, fp32, cache, print, cfg.run.threads)
        result = {
            "generated_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "generated_by": "python -m compression.domain --results",
            "cpu": describe_cpu(), "cpu_features": cpu_features(),
            "model": {"name": name, "int8_sha256": entry["trained_on"].get("model_sha256"), "note": args.model_note},
            "entry": entry,
            "baseline_distance": mahalanobis_baseline(feats.pools[TAP], sd.records, sd.split, n_boot=args.n_boot),
        }
        Path(args.results).parent.mkdir(parents=True, exist_ok=True)
        Path(args.results).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
