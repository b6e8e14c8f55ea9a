"""Tests of the fairness-audit metrics engine against sklearn / fairlearn and on real PAD-UFES-20 labels."""

from __future__ import annotations

import csv
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    brier_score_loss,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)
from sklearn.metrics import roc_curve as sk_roc_curve

from mendicant_desktop.core import audit as A

DATA_DIR = Path(__file__).parents[2] / ".." / "shared" / "data"
PAD_LABELS = DATA_DIR / "pad_ufes20_clinical" / "labels.csv"
ISIC_LABELS = DATA_DIR / "isic_dermoscopy" / "labels.csv"

GROUP_KEYS = {"n", "n_pos", "sufficient", "fst_source", "n_fst_label", "n_fst_estimated"} | {
    k for m in A.METRICS for k in (m, f"{m}_ci95")}


# ---------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------


def _synthetic(rng: np.random.Generator, n: int, prevalence: float = 0.4, signal: float = 0.25):
    y = (rng.random(n) < prevalence).astype(int)
    s = np.clip(rng.uniform(0.0, 0.75, n) + signal * y, 0.0, 1.0)
    return y, s


def _ece_reference(y, s, n_bins=10):
    """Straightforward loop: bins [k/n, (k+1)/n), last bin closed."""
    y = np.asarray(y, dtype=float)
    s = np.asarray(s, dtype=float)
    total = 0.0
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        in_bin = (s >= lo) & ((s < hi) if k < n_bins - 1 else (s <= hi))
        if in_bin.any():
            total += in_bin.sum() / s.size * abs(s[in_bin].mean() - y[in_bin].mean())
    return total


def _nan_safe(fn):
    def wrapped(y_true, y_score):
        if len(set(np.asarray(y_true).tolist())) < 2:
            return float("nan")
        return fn(y_true, y_score)

    return wrapped


def _fairlearn_frame(y, s, groups, threshold):
    from fairlearn.metrics import MetricFrame

    def called(x):
        return (np.asarray(x) >= threshold).astype(int)

    metrics = {
        "auroc": _nan_safe(roc_auc_score),
        "sensitivity": lambda yt, sc: recall_score(yt, called(sc), zero_division=np.nan),
        "specificity": lambda yt, sc: recall_score(yt, called(sc), pos_label=0, zero_division=np.nan),
        "ppv": lambda yt, sc: precision_score(yt, called(sc), zero_division=np.nan),
        "npv": lambda yt, sc: precision_score(yt, called(sc), pos_label=0, zero_division=np.nan),
        "brier": lambda yt, sc: brier_score_loss(yt, sc, labels=[0, 1]),
        "count": lambda yt, sc: len(yt),
        "n_pos": lambda yt, sc: int(np.sum(yt)),
    }
    return MetricFrame(
        metrics=metrics, y_true=np.asarray(y), y_pred=np.asarray(s), sensitive_features=np.asarray(groups)
    )


def _assert_close_or_both_nan(a, b, tol=1e-12):
    if math.isnan(b):
        assert math.isnan(a), (a, b)
    else:
        assert a == pytest.approx(b, abs=tol), (a, b)


def _assert_groups_match_fairlearn(result, y, s, groups, threshold):
    frame = _fairlearn_frame(y, s, groups, threshold).by_group
    assert set(result.groups) == set(frame.index)
    for name, gm in result.groups.items():
        row = frame.loc[name]
        assert gm.n == row["count"]
        assert gm.n_pos == row["n_pos"]
        for metric in ("auroc", "sensitivity", "specificity", "ppv", "npv", "brier"):
            _assert_close_or_both_nan(getattr(gm, metric), float(row[metric]))


# ---------------------------------------------------------------------------------------------------
# AUROC and ROC
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_auroc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    y = (rng.random(n) < rng.uniform(0.05, 0.95)).astype(int)
    y[0], y[1] = 0, 1  # both classes present
    decimals = int(rng.integers(0, 3))  # 0 decimals: heavy ties
    s = np.round(rng.normal(size=n) + 0.7 * y, decimals)
    assert A.auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_edge_values():
    assert A.auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert A.auroc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert A.auroc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    # one tie across classes counts one half: pairs (1 vs 0): 0.3>0.1, 0.3==0.3 -> (1 + 0.5) / 2
    assert A.auroc([0, 0, 1], [0.1, 0.3, 0.3]) == 0.75
    assert A.auroc([True, False], [0.9, 0.1]) == 1.0


def test_auroc_nan_when_class_absent_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(A.auroc([1, 1, 1], [0.1, 0.2, 0.3]))
        assert math.isnan(A.auroc([0, 0], [0.1, 0.2]))
        assert math.isnan(A.auroc([], []))


@pytest.mark.parametrize("seed", range(10))
def test_roc_curve_matches_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    n = 150
    y = (rng.random(n) < 0.3).astype(int)
    y[:2] = [0, 1]
    s = np.round(rng.random(n) + 0.3 * y, 1)
    fpr, tpr, thr = A.roc_curve(y, s)
    sk_fpr, sk_tpr, sk_thr = sk_roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert thr[0] == np.inf
    np.testing.assert_allclose(thr[1:], sk_thr[1:])
    # trapezoidal area of the curve equals the rank-statistic AUROC
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has only trapz
    assert trapezoid(tpr, fpr) == pytest.approx(A.auroc(y, s), abs=1e-12)


def test_roc_curve_single_class_gives_nan_rate():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fpr, tpr, _ = A.roc_curve([1, 1, 1], [0.2, 0.5, 0.9])
    assert np.all(np.isnan(fpr))
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 1])


# ---------------------------------------------------------------------------------------------------
# operating-point metrics
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_threshold_metrics_match_confusion_matrix(seed):
    rng = np.random.default_rng(200 + seed)
    n = int(rng.integers(20, 500))
    y = (rng.random(n) < 0.35).astype(int)
    s = np.round(rng.random(n), 2)
    threshold = float(s[int(rng.integers(0, n))])  # a threshold that some scores hit exactly
    tn, fp, fn, tp = confusion_matrix(y, (s >= threshold).astype(int), labels=[0, 1]).ravel()
    assert A.confusion_counts(y, s, threshold) == (tp, fp, tn, fn)
    expected = {
        "sensitivity": tp / (tp + fn) if tp + fn else math.nan,
        "specificity": tn / (tn + fp) if tn + fp else math.nan,
        "ppv": tp / (tp + fp) if tp + fp else math.nan,
        "npv": tn / (tn + fn) if tn + fn else math.nan,
    }
    for name, value in expected.items():
        _assert_close_or_both_nan(getattr(A, name)(y, s, threshold), value)


def test_score_equal_to_threshold_is_positive():
    c = A.confusion_counts([1, 0], [0.5, 0.5], 0.5)
    assert c == A.ConfusionCounts(tp=1, fp=1, tn=0, fn=0)


def test_undefined_threshold_metrics_are_nan_without_warnings():
    y = [0, 0, 1, 1]
    s = [0.1, 0.2, 0.3, 0.4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(A.ppv(y, s, 0.9))  # nothing called positive
        assert math.isnan(A.npv(y, s, 0.0))  # nothing called negative
        assert math.isnan(A.sensitivity([0, 0], [0.1, 0.9], 0.5))
        assert math.isnan(A.specificity([1, 1], [0.1, 0.9], 0.5))
    assert A.specificity(y, s, 0.9) == 1.0 and A.sensitivity(y, s, 0.9) == 0.0


# ---------------------------------------------------------------------------------------------------
# calibration
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(10))
def test_brier_matches_sklearn(seed):
    rng = np.random.default_rng(300 + seed)
    y, s = _synthetic(rng, 300)
    assert A.brier_score(y, s) == pytest.approx(brier_score_loss(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_ece_matches_reference(seed):
    rng = np.random.default_rng(400 + seed)
    y, s = _synthetic(rng, 500, signal=rng.uniform(0, 0.3))
    assert A.ece(y, s) == pytest.approx(_ece_reference(y, s), abs=1e-12)
    assert A.ece(y, s, n_bins=7) == pytest.approx(_ece_reference(y, s, 7), abs=1e-12)


def test_ece_bin_edges_and_known_value():
    s = np.array([k / 10 for k in range(11)])  # every edge, including 0 and 1
    y = np.array([0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1])
    assert A.ece(y, s) == pytest.approx(_ece_reference(y, s), abs=1e-12)
    # perfectly calibrated by construction: half the 0.5 scores are positive
    assert A.ece([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.0
    # all 0.9, none positive -> |0.9 - 0| = 0.9
    assert A.ece([0, 0, 0], [0.9, 0.9, 0.9]) == pytest.approx(0.9)


def test_calibration_curve_matches_reference_and_ece():
    rng = np.random.default_rng(7)
    y, s = _synthetic(rng, 800)
    curve = A.calibration_curve(y, s)
    assert curve.count.sum() == y.size
    np.testing.assert_allclose(curve.bin_edges, np.linspace(0, 1, 11))
    for k in range(10):
        in_bin = (s >= k / 10) & ((s < (k + 1) / 10) if k < 9 else (s <= 1))
        assert curve.count[k] == in_bin.sum()
        if in_bin.any():
            assert curve.mean_predicted[k] == pytest.approx(s[in_bin].mean())
            assert curve.observed_rate[k] == pytest.approx(y[in_bin].mean())
        else:
            assert math.isnan(curve.mean_predicted[k]) and math.isnan(curve.observed_rate[k])
    filled = curve.count > 0
    weighted = np.sum(
        curve.count[filled] / y.size * np.abs(curve.mean_predicted[filled] - curve.observed_rate[filled])
    )
    assert weighted == pytest.approx(A.ece(y, s), abs=1e-12)


def test_calibration_metrics_reject_non_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.ece([0, 1], [0.2, 1.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.brier_score([0, 1], [-0.1, 0.5])


def test_input_validation():
    with pytest.raises(ValueError, match="only 0 and 1"):
        A.auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        A.auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="differ in length"):
        A.auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="threshold"):
        A.sensitivity([0, 1], [0.1, 0.2], float("nan"))


# ---------------------------------------------------------------------------------------------------
# bootstrap
# ---------------------------------------------------------------------------------------------------


def test_vectorised_rows_match_sklearn_per_resample():
    """The (resamples x items) kernel must equal computing each resample on its own."""
    rng = np.random.default_rng(11)
    y, s = _synthetic(rng, 120)
    s = np.round(s, 2)  # ties
    idx = rng.integers(0, y.size, size=(25, y.size))
    rows = A._metrics_rows(s[idx], y[idx], 0.5)
    for b in range(idx.shape[0]):
        yb, sb = y[idx[b]], s[idx[b]]
        assert rows["auroc"][b] == pytest.approx(roc_auc_score(yb, sb), abs=1e-12)
        assert rows["brier"][b] == pytest.approx(brier_score_loss(yb, sb), abs=1e-12)
        assert rows["ece"][b] == pytest.approx(_ece_reference(yb, sb), abs=1e-12)
        tn, fp, fn, tp = confusion_matrix(yb, (sb >= 0.5).astype(int), labels=[0, 1]).ravel()
        assert rows["sensitivity"][b] == pytest.approx(tp / (tp + fn))
        assert rows["specificity"][b] == pytest.approx(tn / (tn + fp))
        assert rows["ppv"][b] == pytest.approx(tp / (tp + fp))
        assert rows["npv"][b] == pytest.approx(tn / (tn + fn))


def test_bootstrap_is_stratified():
    """2 positives in 100: an unstratified bootstrap loses every positive in ~13% of resamples."""
    rng = np.random.default_rng(3)
    y = np.zeros(100, dtype=int)
    y[:2] = 1
    s = rng.random(100)
    boots = A.bootstrap_metrics(y, s, 0.5, n_boot=500, seed=1)
    assert np.all(np.isfinite(boots["auroc"]))
    assert np.all(np.isfinite(boots["sensitivity"]))
    # with 2 positives, sensitivity can only be 0, 1/2 or 1
    assert set(np.unique(boots["sensitivity"])) <= {0.0, 0.5, 1.0}


def test_bootstrap_deterministic_for_seed_and_differs_across_seeds():
    rng = np.random.default_rng(5)
    y, s = _synthetic(rng, 300)
    a = A.bootstrap_metrics(y, s, 0.5, n_boot=200, seed=42)
    b = A.bootstrap_metrics(y, s, 0.5, n_boot=200, seed=42)
    c = A.bootstrap_metrics(y, s, 0.5, n_boot=200, seed=43)
    for m in A.METRICS:
        np.testing.assert_array_equal(a[m], b[m])
    assert not np.array_equal(a["auroc"], c["auroc"])
    r1 = A.audit(s, y, ["II"] * 300, 0.5, n_boot=200, seed=9)
    r2 = A.audit(s, y, ["II"] * 300, 0.5, n_boot=200, seed=9)
    assert r1 == r2


def test_ci_contains_point_estimate():
    rng = np.random.default_rng(8)
    y, s = _synthetic(rng, 600)
    gm = A.audit(s, y, ["III"] * y.size, 0.5, n_boot=1000, seed=0).overall
    for m in A.METRICS:
        lo, hi = getattr(gm, f"{m}_ci95")
        assert lo <= getattr(gm, m) <= hi, m
        assert lo < hi, m


def test_ci_narrows_with_n():
    rng = np.random.default_rng(9)
    y_small, s_small = _synthetic(rng, 100)
    y_big, s_big = _synthetic(rng, 2500)
    small = A.audit(s_small, y_small, [""] * y_small.size, 0.5, n_boot=500).overall
    big = A.audit(s_big, y_big, [""] * y_big.size, 0.5, n_boot=500).overall
    for m in A.METRICS:
        w_small = np.subtract(*getattr(small, f"{m}_ci95")[::-1])
        w_big = np.subtract(*getattr(big, f"{m}_ci95")[::-1])
        assert w_big < 0.6 * w_small, m  # sqrt(100/2500) = 0.2 in expectation


def test_percentile_ci():
    assert A.percentile_ci(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    assert A.percentile_ci([np.nan, 1.0, np.nan, 1.0]) == (1.0, 1.0)
    lo, hi = A.percentile_ci([np.nan, np.nan])
    assert math.isnan(lo) and math.isnan(hi)


def test_audit_group_ci_reproducible_from_bootstrap_metrics():
    rng = np.random.default_rng(10)
    y, s = _synthetic(rng, 400)
    g = np.where(rng.random(400) < 0.5, "II", "IV")
    res = A.audit(s, y, g, 0.5, n_boot=300, seed=4)
    mask = g == "IV"
    boots = A.bootstrap_metrics(y[mask], s[mask], 0.5, n_boot=300, seed=4, group="IV")
    for m in A.METRICS:
        assert getattr(res.groups["IV"], f"{m}_ci95") == A.percentile_ci(boots[m])


def test_audit_speed_1000_resamples_1200_items_7_groups():
    rng = np.random.default_rng(12)
    y, s = _synthetic(rng, 1200)
    g = rng.choice(["1", "2", "3", "4", "5", "6", ""], size=1200)
    start = time.perf_counter()
    res = A.audit(s, y, g, 0.5, n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert set(res.groups) == set(A.FST_GROUPS)
    assert elapsed < 3.0, f"audit took {elapsed:.2f}s"


# ---------------------------------------------------------------------------------------------------
# groups, sufficiency, gaps
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "n_pos", "expected"),
    [(30, 5, True), (29, 10, False), (30, 4, False), (30, 26, False), (30, 25, True), (1000, 5, True)],
)
def test_is_sufficient(n, n_pos, expected):
    assert A.is_sufficient(n, n_pos) is expected


def _group_data(rng, name, n, n_pos, strength):
    y = np.r_[np.ones(n_pos, int), np.zeros(n - n_pos, int)]
    s = np.clip(rng.uniform(0, 0.7, n) + strength * y, 0, 1)
    return y, s, [name] * n


def test_insufficient_groups_flagged_and_excluded_from_gaps():
    rng = np.random.default_rng(13)
    parts = [
        _group_data(rng, "I", 29, 10, 0.3),  # n < 30
        _group_data(rng, "II", 200, 80, 0.25),
        _group_data(rng, "III", 100, 40, 0.05),
        _group_data(rng, "IV", 40, 4, -0.4),  # < 5 positives, would dominate the gap
        _group_data(rng, "V", 40, 36, 0.3),  # < 5 negatives
        _group_data(rng, "unknown", 300, 100, -0.5),  # sufficient but never in a gap
    ]
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    g = sum((p[2] for p in parts), [])
    res = A.audit(s, y, g, 0.5, n_boot=200, seed=0)
    assert list(res.groups) == ["I", "II", "III", "IV", "V", "unknown"]  # VI absent, report order
    assert {k: v.sufficient for k, v in res.groups.items()} == {
        "I": False,
        "II": True,
        "III": True,
        "IV": False,
        "V": False,
        "unknown": True,
    }
    assert res.gap_groups == ("II", "III")
    expected_gap = abs(res.groups["II"].auroc - res.groups["III"].auroc)
    assert res.auroc_gap == pytest.approx(expected_gap)
    assert res.sensitivity_gap == pytest.approx(
        abs(res.groups["II"].sensitivity - res.groups["III"].sensitivity)
    )
    # the insufficient groups still carry numbers (reports withhold them, to_dict keeps them)
    assert math.isfinite(res.groups["IV"].auroc)
    # gap CI is the percentile of max-min over the very same per-group resamples
    b2 = A.bootstrap_metrics(y[29:229], s[29:229], 0.5, n_boot=200, seed=0, group="II")["auroc"]
    b3 = A.bootstrap_metrics(y[229:329], s[229:329], 0.5, n_boot=200, seed=0, group="III")["auroc"]
    assert res.auroc_gap_ci95 == A.percentile_ci(np.abs(b2 - b3))
    lo, hi = res.auroc_gap_ci95
    assert lo <= res.auroc_gap <= hi


def test_gap_nan_with_fewer_than_two_sufficient_groups():
    rng = np.random.default_rng(14)
    parts = [
        _group_data(rng, "II", 100, 40, 0.2),
        _group_data(rng, "VI", 10, 5, 0.2),
        _group_data(rng, "", 100, 50, 0.2),
    ]
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    g = sum((p[2] for p in parts), [])
    res = A.audit(s, y, g, 0.5, n_boot=50)
    assert res.gap_groups == ("II",)
    assert math.isnan(res.auroc_gap) and math.isnan(res.sensitivity_gap)
    assert all(math.isnan(x) for x in res.auroc_gap_ci95)


def test_audit_overall_matches_whole_population_and_single_class_group_is_nan():
    rng = np.random.default_rng(15)
    y, s = _synthetic(rng, 300)
    g = np.array(["II"] * 300, dtype=object)
    g[:40] = ""
    y[:40] = 0  # 'unknown' group has no positives
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = A.audit(s, y, g, 0.5, n_boot=100)
    assert res.overall.group == "overall"
    assert res.overall.n == 300 and res.overall.n_pos == int(y.sum())
    assert res.overall.auroc == pytest.approx(roc_auc_score(y, s))
    unk = res.groups["unknown"]
    assert unk.n_pos == 0 and not unk.sufficient
    assert math.isnan(unk.auroc) and math.isnan(unk.sensitivity)
    assert all(math.isnan(x) for x in unk.auroc_ci95)
    assert unk.specificity == pytest.approx(np.mean(s[:40] < 0.5))


def test_per_group_metrics_match_fairlearn_metricframe():
    rng = np.random.default_rng(16)
    n = 900
    g = rng.choice(["I", "II", "III", "IV", "V", "VI", "unknown"], size=n)
    strength = {"I": 0.3, "II": 0.2, "III": 0.1, "IV": 0.0, "V": 0.25, "VI": 0.15, "unknown": 0.2}
    y = (rng.random(n) < 0.4).astype(int)
    s = np.clip(rng.uniform(0, 0.7, n) + np.array([strength[x] for x in g]) * y, 0, 1)
    res = A.audit(s, y, g, 0.45, n_boot=100)
    _assert_groups_match_fairlearn(res, y, s, g, 0.45)
    for name, gm in res.groups.items():
        mask = g == name
        assert gm.ece == pytest.approx(_ece_reference(y[mask], s[mask]), abs=1e-12)


def test_fst_source_per_group():
    y = np.tile([0, 1], 50)
    s = np.linspace(0, 1, 100)
    g = ["II"] * 50 + ["III"] * 50
    src = ["label"] * 50 + ["estimated"] * 25 + ["label"] * 25
    res = A.audit(s, y, g, 0.5, n_boot=10, fst_source=src)
    assert res.groups["II"].fst_source == "label"
    assert res.groups["III"].fst_source == "mixed"
    assert res.overall.fst_source == "mixed"
    assert A.audit(s, y, g, 0.5, n_boot=10).groups["II"].fst_source == "label"
    est = A.audit(s, y, g, 0.5, n_boot=10, fst_source="estimated")
    assert {gm.fst_source for gm in est.groups.values()} == {"estimated"}
    with pytest.raises(ValueError, match="fst_source"):
        A.audit(s, y, g, 0.5, n_boot=10, fst_source="guessed")


def test_audit_validation():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        A.audit([0.2, 30.0], [0, 1], ["I", "I"], 0.5)
    with pytest.raises(ValueError, match="differ in length"):
        A.audit([0.2, 0.3], [0, 1], ["I"], 0.5)
    with pytest.raises(ValueError, match="Fitzpatrick"):
        A.audit([0.2, 0.3], [0, 1], ["I", "VII"], 0.5)
    with pytest.raises(ValueError, match="empty"):
        A.audit([], [], [], 0.5)
    with pytest.raises(ValueError, match="seed"):
        A.audit([0.2, 0.3], [0, 1], ["I", "I"], 0.5, seed=-1)


# ---------------------------------------------------------------------------------------------------
# serialisation
# ---------------------------------------------------------------------------------------------------


def test_to_dict_json_round_trip_with_nan_as_null():
    rng = np.random.default_rng(17)
    parts = [
        _group_data(rng, "I", 60, 20, 0.2),
        _group_data(rng, "II", 60, 25, 0.1),
        _group_data(rng, "unknown", 20, 0, 0.0),
    ]  # single class: AUROC etc. are NaN
    y = np.concatenate([p[0] for p in parts])
    s = np.concatenate([p[1] for p in parts])
    g = sum((p[2] for p in parts), [])
    res = A.audit(s, y, g, 0.5, n_boot=100, model="mendicant-int8")
    d = res.to_dict()
    assert set(d) == {
        "model",
        "threshold",
        "overall",
        "groups",
        "auroc_gap",
        "auroc_gap_ci95",
        "sensitivity_gap",
        "grouping",
    }
    assert d["model"] == "mendicant-int8" and res.to_dict(model="other")["model"] == "other"
    assert list(d["groups"]) == ["I", "II", "unknown"]
    assert set(d["overall"]) == GROUP_KEYS
    for gd in d["groups"].values():
        assert set(gd) == GROUP_KEYS
    unk = d["groups"]["unknown"]
    assert unk["auroc"] is None and unk["auroc_ci95"] == [None, None]
    assert unk["sensitivity"] is None and unk["sufficient"] is False
    text = json.dumps(d, allow_nan=False)  # would raise on NaN
    assert "NaN" not in text and "null" in text
    loaded = json.loads(text)
    assert loaded == d
    back = A.AuditResult.from_dict(loaded)
    assert back.to_dict() == d
    assert math.isnan(back.groups["unknown"].auroc)
    assert back.groups["I"].auroc_ci95 == res.groups["I"].auroc_ci95
    assert back.auroc_gap == res.auroc_gap


# ---------------------------------------------------------------------------------------------------
# label helpers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dx", "expected"),
    [
        ("MEL", 1),
        ("mel", 1),
        (" Bcc ", 1),
        ("SCC", 1),
        ("scc", 1),
        ("akiec", 1),
        ("AKIEC", 1),
        ("AK", 0),
        ("ACK", 0),
        ("ack", 0),
        ("NV", 0),
        ("NEV", 0),
        ("nv", 0),
        ("BKL", 0),
        ("SEK", 0),
        ("DF", 0),
        ("vasc", 0),
        ("", None),
        ("UNK", None),
        ("melanoma", None),
        (None, None),
        (float("nan"), None),
        (1, None),
    ],
)
def test_dx_to_malignant(dx, expected):
    assert A.dx_to_malignant(dx) == expected


def test_dx_to_malignant_akiec_switch():
    assert A.dx_to_malignant("akiec", akiec_malignant=False) == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, "I"),
        (6, "VI"),
        (np.int64(3), "III"),
        (2.0, "II"),
        ("1", "I"),
        ("1.0", "I"),
        (" 4 ", "IV"),
        ("I", "I"),
        ("vi", "VI"),
        ("Iii", "III"),
        ("iv", "IV"),
        ("", "unknown"),
        ("  ", "unknown"),
        (None, "unknown"),
        (float("nan"), "unknown"),
        (np.nan, "unknown"),
        ("nan", "unknown"),
        ("unknown", "unknown"),
        ("UNKNOWN", "unknown"),
    ],
)
def test_parse_fst_accepts(value, expected):
    assert A.parse_fst(value) == expected


@pytest.mark.parametrize(
    "value", [0, 7, 2.5, "0", "7", "VII", "IIII", "type II", "abc", True, -1, float("inf"), [1], "1.5"]
)
def test_parse_fst_rejects(value):
    with pytest.raises(ValueError, match="Fitzpatrick skin type"):
        A.parse_fst(value)


# ---------------------------------------------------------------------------------------------------
# real data
# ---------------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        pytest.skip(f"real data not available: {path} is absent (expected ../shared/data next to the repo)")
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("path", [PAD_LABELS, ISIC_LABELS], ids=["pad", "isic"])
def test_dx_to_malignant_agrees_with_real_malignant_column(path):
    rows = _read_csv(path)
    assert rows
    for row in rows:
        assert A.dx_to_malignant(row["dx"]) == int(row["malignant"]), row["dx"]


def test_real_pad_per_fst_metrics_match_fairlearn():
    rows = _read_csv(PAD_LABELS)
    y = np.array([int(r["malignant"]) for r in rows])
    groups = [A.parse_fst(r["fst"]) for r in rows]
    # A simple, deterministic real score: patient age (in centuries) as a malignancy score.
    s = np.array([float(r["age"]) / 100.0 for r in rows])
    threshold = 0.6
    res = A.audit(s, y, groups, threshold, n_boot=200, seed=0)

    counts = {name: gm.n for name, gm in res.groups.items()}
    assert counts == {"I": 88, "II": 454, "III": 162, "IV": 36, "V": 3, "VI": 1, "unknown": 490}
    assert {k: v.sufficient for k, v in res.groups.items()} == {
        "I": True,
        "II": True,
        "III": True,
        "IV": True,
        "V": False,
        "VI": False,
        "unknown": False,
    }
    _assert_groups_match_fairlearn(res, y, s, groups, threshold)

    g = np.array(groups)
    for name, gm in res.groups.items():
        mask = g == name
        assert gm.ece == pytest.approx(_ece_reference(y[mask], s[mask]), abs=1e-12)
    assert res.overall.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    aucs = [roc_auc_score(y[g == k], s[g == k]) for k in ("I", "II", "III", "IV")]
    assert res.gap_groups == ("I", "II", "III", "IV")
    assert res.auroc_gap == pytest.approx(max(aucs) - min(aucs), abs=1e-12)
    assert res.auroc_gap_ci95[0] <= res.auroc_gap <= res.auroc_gap_ci95[1]
    # the README's 'unknown' FST rows are all benign in this set: AUROC must be undefined, not a number
    assert res.groups["unknown"].n_pos == 0 and math.isnan(res.groups["unknown"].auroc)
    json.dumps(res.to_dict(), allow_nan=False)


# ---------------------------------------------------------------------------------------------------
# DDI-style grouping and the provenance of skin types
# ---------------------------------------------------------------------------------------------------


def test_group_of_ddi_pools_adjacent_types():
    assert [A.group_of(v, "ddi") for v in (1, "II", "3", "iv", 5.0, "VI", "")] == [
        "I-II", "I-II", "III-IV", "III-IV", "V-VI", "V-VI", "unknown"]
    assert A.group_of("4") == "IV" and A.group_order("ddi") == ("I-II", "III-IV", "V-VI", "unknown")
    with pytest.raises(ValueError, match="grouping"):
        A.group_of("I", "decades")


def test_ddi_audit_equals_type_audit_on_pooled_labels():
    """Grouping 'ddi' is the same as relabelling the types by hand: same metrics (seeds aside), same gap groups."""
    rng = np.random.default_rng(5)
    types = rng.choice(["I", "II", "III", "IV", "V", "VI"], 400)
    y = rng.integers(0, 2, 400)
    s = np.clip(0.5 * y + rng.normal(0.25, 0.2, 400), 0, 1)
    res = A.audit(s, y, types, 0.5, n_boot=0, grouping="ddi")
    assert list(res.groups) == ["I-II", "III-IV", "V-VI"] and res.grouping == "ddi"
    for name, members in (("I-II", ("I", "II")), ("III-IV", ("III", "IV")), ("V-VI", ("V", "VI"))):
        m = np.isin(types, members)
        assert res.groups[name].n == m.sum()
        assert res.groups[name].auroc == pytest.approx(A.auroc(y[m], s[m]))
    assert res.gap_groups == ("I-II", "III-IV", "V-VI")
    assert A.AuditResult.from_dict(res.to_dict()).gap_groups == res.gap_groups


def test_groups_count_label_and_estimated_skin_types():
    y = np.array([0, 1] * 20)
    s = np.linspace(0, 1, 40)
    g = ["V"] * 10 + ["VI"] * 10 + ["II"] * 20
    src = ["label"] * 15 + ["estimated"] * 5 + ["label"] * 20
    res = A.audit(s, y, g, 0.5, n_boot=0, fst_source=src, grouping="ddi")
    vv = res.groups["V-VI"]
    assert (vv.fst_source, vv.n_label, vv.n_estimated) == ("mixed", 15, 5)
    assert (res.groups["I-II"].fst_source, res.groups["I-II"].n_label) == ("label", 20)
    assert res.to_dict()["groups"]["V-VI"]["n_fst_estimated"] == 5
