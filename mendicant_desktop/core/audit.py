"""Fairness-audit metrics engine: discrimination, operating-point and calibration metrics per skin type.

numpy and the standard library only. Everything here is pure and deterministic for a given ``seed``.

Conventions
-----------
* ``y_true`` is binary ground truth (1 = malignant); ``scores`` are the model's malignancy scores.
  Ranking metrics (:func:`auroc`, :func:`roc_curve`) and the operating-point metrics accept any finite
  real score; the calibration metrics (:func:`ece`, :func:`brier_score`, :func:`calibration_curve`) and
  :func:`audit` need probabilities in ``[0, 1]``.
* Operating point: ``score >= threshold`` is a positive call.
* A metric that is undefined (e.g. PPV with no positive calls, AUROC with one class absent) is ``nan``;
  no metric ever emits a divide-by-zero ``RuntimeWarning``.
* Confidence intervals are 95% percentile intervals from a *stratified* bootstrap: positives and
  negatives are resampled separately (so every resample keeps the group's class counts), 1,000
  resamples by default. Resamples in which a metric is undefined (e.g. PPV with no positive calls) are
  dropped from that metric's percentile; if none is defined the interval is ``(nan, nan)``.
* Groups are Fitzpatrick skin types ``'I'``..``'VI'`` plus ``'unknown'`` (see :func:`parse_fst`). Each group
  (and the overall population) gets its own random stream derived from ``(seed, group)``, so a group's
  intervals do not depend on which other groups are present; the AUROC-gap interval reuses exactly those
  per-group resamples.
* Grouping (``grouping``): ``'type'`` reports each type I..VI; ``'ddi'`` pools them as the Diverse Dermatology
  Images study does, I-II / III-IV / V-VI (:data:`DDI_GROUPS`), which keeps dark skin above n = 30 where single
  types are small. Each group records how many of its skin types came from a label and how many were estimated
  (``n_label``/``n_estimated``); a group holding both is ``fst_source='mixed'`` and says so with the counts.
* A group is *sufficient* when ``n >= 30`` and it has at least 5 positives and 5 negatives. Metrics of
  insufficient groups are still computed and serialised, but such groups are left out of the gaps and
  reports should withhold their numbers. ``'unknown'`` is never part of a gap.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "ECE_BINS",
    "FST_GROUPS",
    "DDI_GROUPS",
    "GROUPINGS",
    "MIN_GROUP_N",
    "MIN_CLASS_N",
    "METRICS",
    "AuditResult",
    "CalibrationCurve",
    "ConfusionCounts",
    "GroupMetrics",
    "audit",
    "auroc",
    "bootstrap_metrics",
    "brier_score",
    "calibration_curve",
    "confusion_counts",
    "dx_to_malignant",
    "group_of",
    "parse_partition",
    "group_order",
    "ece",
    "is_sufficient",
    "npv",
    "parse_fst",
    "percentile_ci",
    "ppv",
    "roc_curve",
    "sensitivity",
    "specificity",
]

FST_GROUPS: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI", "unknown")
"""Group labels in report order."""
DDI_GROUPS: tuple[str, ...] = ("I-II", "III-IV", "V-VI", "unknown")
"""DDI-style pooled groups in report order (ASCII hyphens: safe in CSV and JSON keys; reports show an en dash)."""
GROUPINGS: tuple[str, ...] = ("type", "ddi")
_DDI_OF = {"I": "I-II", "II": "I-II", "III": "III-IV", "IV": "III-IV", "V": "V-VI", "VI": "V-VI", "unknown": "unknown"}

ECE_BINS = 10
MIN_GROUP_N = 30
MIN_CLASS_N = 5
METRICS: tuple[str, ...] = ("auroc", "sensitivity", "specificity", "ppv", "npv", "ece", "brier")

_ROMAN = ("I", "II", "III", "IV", "V", "VI")
_FST_SOURCES = ("label", "estimated")
# Stable per-group stream keys for the bootstrap (never reorder: it would change published intervals).
_SEED_KEYS = {"overall": 0, "I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "unknown": 7,
              "I-II": 8, "III-IV": 9, "V-VI": 10}
# Upper bound on (resamples x items) held in memory at once during the bootstrap.
_CHUNK_ELEMENTS = 2_000_000

NAN = float("nan")
CI = tuple[float, float]


# --------------------------------------------------------------------------------------------------
# Label helpers
# --------------------------------------------------------------------------------------------------

_MALIGNANT_CODES = frozenset({"mel", "bcc", "scc"})
_BENIGN_CODES = frozenset({"nv", "nev", "bkl", "sek", "df", "vasc", "ak", "ack"})


def dx_to_malignant(dx: Any, *, akiec_malignant: bool = True) -> int | None:
    """Map a diagnosis code (ISIC 2019, HAM10000 or PAD-UFES-20; case-insensitive) to 1/0/None.

    * ``MEL``, ``BCC``, ``SCC`` -> 1, as in the data README's ``malignant`` column (PAD's skin-cancer group).
    * ``NV``/``NEV``, ``BKL``, ``SEK``, ``DF``, ``VASC`` -> 0.
    * ``AK`` (ISIC 2019) and ``ACK`` (PAD) -> **0**: actinic keratosis is pre-malignant, and both the data
      README and PAD's own grouping count it as not cancer.
    * ``akiec`` (HAM10000) -> **1** by default: HAM's class pools actinic keratoses *with* Bowen's disease
      (SCC in situ), and the app's malignancy score is p(mel)+p(bcc)+p(akiec), so a HAM-style label set
      is audited on the same definition as the score. Pass ``akiec_malignant=False`` to count it as 0.

      Caution: in the shared data sets' ``dx7`` column, ``akiec`` stands for AK/ACK only (their SCC rows
      have an empty ``dx7``), so derive labels from the ``dx`` column there, never from ``dx7``.
    * Anything else (unknown codes, empty, ``None``, ``nan``, non-strings) -> ``None``.
    """
    if not isinstance(dx, str):
        return None
    code = dx.strip().lower()
    if code in _MALIGNANT_CODES:
        return 1
    if code in _BENIGN_CODES:
        return 0
    if code == "akiec":
        return 1 if akiec_malignant else 0
    return None


def parse_fst(value: Any) -> str:
    """Normalise a Fitzpatrick skin type to ``'I'``..``'VI'`` or ``'unknown'``.

    Accepts integers 1-6 (Python or numpy), integral floats (``2.0``), numeric strings (``'2'``, ``'2.0'``),
    Roman numerals in any case (``'iv'``), and ``'unknown'`` itself. ``None``, ``nan``, the empty string
    and the string ``'nan'`` mean not recorded -> ``'unknown'``. Anything else raises ``ValueError``.
    """
    if value is None:
        return "unknown"
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"Fitzpatrick skin type must be 1-6, I-VI or empty, got boolean {value!r}")
    if isinstance(value, numbers.Integral):
        number = float(int(value))
    elif isinstance(value, numbers.Real):
        number = float(value)
        if math.isnan(number):
            return "unknown"
    elif isinstance(value, str):
        text = value.strip()
        if text == "" or text.lower() in ("nan", "unknown"):
            return "unknown"
        if text.upper() in _ROMAN:
            return text.upper()
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"Fitzpatrick skin type must be 1-6, I-VI or empty, got {value!r}") from None
        if math.isnan(number):
            return "unknown"
    else:
        raise ValueError(
            f"Fitzpatrick skin type must be 1-6, I-VI or empty, got {type(value).__name__} {value!r}"
        )
    if not (math.isfinite(number) and number.is_integer() and 1 <= number <= 6):
        raise ValueError(f"Fitzpatrick skin type must be 1-6, I-VI or empty, got {value!r}")
    return _ROMAN[int(number) - 1]


PARTITIONS: tuple[str, ...] = ("malignant", "benign", "non-neoplastic")
"""Fitzpatrick17k's ``three_partition``: the second comparison (malignant vs benign neoplasms) drops the third."""
_PARTITION_ALIASES = {
    "malignant": "malignant", "malignant-neoplasm": "malignant", "benign": "benign", "benign-neoplasm": "benign",
    "non-neoplastic": "non-neoplastic", "non_neoplastic": "non-neoplastic", "nonneoplastic": "non-neoplastic",
    "non neoplastic": "non-neoplastic", "inflammatory": "non-neoplastic",
}


def parse_partition(value: Any) -> str:
    """A lesion-category cell -> 'malignant' / 'benign' / 'non-neoplastic', or '' when empty or unrecognised."""
    if not isinstance(value, str):
        return ""
    return _PARTITION_ALIASES.get(value.strip().lower(), "")


def _check_grouping(grouping: str) -> str:
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    return grouping


def group_order(grouping: str = "type") -> tuple[str, ...]:
    """The groups of a grouping in report order ('unknown' last)."""
    return FST_GROUPS if _check_grouping(grouping) == "type" else DDI_GROUPS


def group_of(value: Any, grouping: str = "type") -> str:
    """The group of one skin type (anything :func:`parse_fst` accepts) under ``grouping``."""
    fst = parse_fst(value)
    return fst if _check_grouping(grouping) == "type" else _DDI_OF[fst]


# --------------------------------------------------------------------------------------------------
# Input validation and small numeric helpers
# --------------------------------------------------------------------------------------------------


def _as_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int8)
    if y.size and not (np.issubdtype(y.dtype, np.number)):
        raise ValueError(f"y_true must be 0/1 numbers or booleans, got dtype {y.dtype}")
    yf = y.astype(np.float64)
    if not np.all((yf == 0) | (yf == 1)):
        bad = yf[~((yf == 0) | (yf == 1))][:3]
        raise ValueError(f"y_true must contain only 0 and 1, found e.g. {bad.tolist()}")
    return yf.astype(np.int8)


def _as_scores(scores: Any, *, probabilities: bool = False) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional, got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (found nan or inf)")
    if probabilities and s.size and (s.min() < 0.0 or s.max() > 1.0):
        raise ValueError(
            f"scores must be probabilities in [0, 1] for calibration metrics, got range "
            f"[{s.min():.4g}, {s.max():.4g}]"
        )
    return s


def _pair(y_true: Any, scores: Any, *, probabilities: bool = False) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(y_true)
    s = _as_scores(scores, probabilities=probabilities)
    if y.shape != s.shape:
        raise ValueError(f"y_true and scores differ in length: {y.size} vs {s.size}")
    return y, s


def _check_threshold(threshold: Any) -> float:
    t = float(threshold)
    if not math.isfinite(t):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return t


def _safe_div(num: Any, den: Any) -> np.ndarray:
    """num / den elementwise, nan where den == 0, without warnings."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _bin_index(s: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bins on [0, 1]; bin k is [k/n, (k+1)/n), the last bin also takes 1.0."""
    return np.minimum((s * n_bins).astype(np.int64), n_bins - 1)


# --------------------------------------------------------------------------------------------------
# Row-wise kernels: every metric is computed on a (rows x items) matrix, so the point estimate
# (one row) and the bootstrap (one row per resample) share exactly the same code.
# --------------------------------------------------------------------------------------------------


def _auroc_rows(ss: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC per row, ties averaged; nan for rows lacking a class."""
    rows, n = ss.shape
    n1 = ys.sum(axis=1, dtype=np.float64)
    n0 = n - n1
    if n == 0:
        return np.full(rows, np.nan)
    order = np.argsort(ss, axis=1)
    s_sorted = np.take_along_axis(ss, order, axis=1)
    y_sorted = np.take_along_axis(ys, order, axis=1)
    pos = np.arange(n)
    starts = np.ones((rows, n), dtype=bool)
    starts[:, 1:] = s_sorted[:, 1:] != s_sorted[:, :-1]
    ends = np.ones((rows, n), dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, pos, n - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = (first + last) * 0.5 + 1.0  # 1-based, ties get their average rank
    rank_sum_pos = np.einsum("ij,ij->i", ranks, y_sorted.astype(np.float64))
    u = rank_sum_pos - n1 * (n1 + 1.0) * 0.5
    return _safe_div(u, n1 * n0)


def _metrics_rows(
    ss: np.ndarray, ys: np.ndarray, threshold: float, n_bins: int = ECE_BINS
) -> dict[str, np.ndarray]:
    """All audit metrics for each row of (scores, labels) matrices of equal shape."""
    rows, n = ss.shape
    yb = ys.astype(bool)
    n1 = yb.sum(axis=1, dtype=np.float64)
    n0 = n - n1
    called = ss >= threshold
    tp = (called & yb).sum(axis=1, dtype=np.float64)
    fp = (called & ~yb).sum(axis=1, dtype=np.float64)
    fn = n1 - tp
    tn = n0 - fp
    yf = ys.astype(np.float64)
    diff = ss - yf
    brier = _safe_div(np.einsum("ij,ij->i", diff, diff), n)
    keys = (np.arange(rows)[:, None] * n_bins + _bin_index(ss, n_bins)).ravel()
    bin_sums = np.bincount(keys, weights=diff.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)
    ece_rows = _safe_div(np.abs(bin_sums).sum(axis=1), n)
    return {
        "auroc": _auroc_rows(ss, ys),
        "sensitivity": _safe_div(tp, n1),
        "specificity": _safe_div(tn, n0),
        "ppv": _safe_div(tp, tp + fp),
        "npv": _safe_div(tn, tn + fn),
        "ece": ece_rows,
        "brier": brier,
    }


# --------------------------------------------------------------------------------------------------
# Public scalar metrics
# --------------------------------------------------------------------------------------------------


def auroc(y_true: Any, scores: Any) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic, ties counted as 1/2.

    Returns ``nan`` when either class is absent.
    """
    y, s = _pair(y_true, scores)
    return float(_auroc_rows(s[None, :], y[None, :])[0])


def roc_curve(y_true: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points for plotting: ``(fpr, tpr, thresholds)``.

    ``thresholds`` are the distinct scores in decreasing order preceded by ``inf`` (no positive calls), and
    point ``k`` is the operating point ``score >= thresholds[k]``; so the curve runs from (0, 0) to (1, 1).
    A rate whose class is absent is ``nan`` throughout.
    """
    y, s = _pair(y_true, scores)
    order = np.argsort(-s, kind="stable")
    s_desc = s[order]
    y_desc = y[order].astype(np.float64)
    last_of_tie = np.r_[s_desc[1:] != s_desc[:-1], True] if s.size else np.zeros(0, dtype=bool)
    tps = np.r_[0.0, np.cumsum(y_desc)[last_of_tie]]
    fps = np.r_[0.0, np.cumsum(1.0 - y_desc)[last_of_tie]]
    thresholds = np.r_[np.inf, s_desc[last_of_tie]]
    n1 = float(y.sum())
    n0 = float(y.size) - n1
    return _safe_div(fps, n0), _safe_div(tps, n1), thresholds


class ConfusionCounts(NamedTuple):
    tp: int
    fp: int
    tn: int
    fn: int


def confusion_counts(y_true: Any, scores: Any, threshold: float) -> ConfusionCounts:
    """Counts at the operating point ``score >= threshold``."""
    y, s = _pair(y_true, scores)
    t = _check_threshold(threshold)
    called = s >= t
    yb = y.astype(bool)
    return ConfusionCounts(
        tp=int(np.sum(called & yb)),
        fp=int(np.sum(called & ~yb)),
        tn=int(np.sum(~called & ~yb)),
        fn=int(np.sum(~called & yb)),
    )


def _ratio(num: int, den: int) -> float:
    return num / den if den else NAN


def sensitivity(y_true: Any, scores: Any, threshold: float) -> float:
    """TP / (TP + FN); ``nan`` without positives."""
    c = confusion_counts(y_true, scores, threshold)
    return _ratio(c.tp, c.tp + c.fn)


def specificity(y_true: Any, scores: Any, threshold: float) -> float:
    """TN / (TN + FP); ``nan`` without negatives."""
    c = confusion_counts(y_true, scores, threshold)
    return _ratio(c.tn, c.tn + c.fp)


def ppv(y_true: Any, scores: Any, threshold: float) -> float:
    """TP / (TP + FP); ``nan`` when nothing is called positive."""
    c = confusion_counts(y_true, scores, threshold)
    return _ratio(c.tp, c.tp + c.fp)


def npv(y_true: Any, scores: Any, threshold: float) -> float:
    """TN / (TN + FN); ``nan`` when nothing is called negative."""
    c = confusion_counts(y_true, scores, threshold)
    return _ratio(c.tn, c.tn + c.fn)


def brier_score(y_true: Any, scores: Any) -> float:
    """Mean squared difference between probability and outcome; ``nan`` for no items."""
    y, s = _pair(y_true, scores, probabilities=True)
    return float(np.mean((s - y) ** 2)) if s.size else NAN


def ece(y_true: Any, scores: Any, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins on [0, 1].

    ``sum_k (n_k / n) * |mean score in bin k - observed positive rate in bin k|``; empty bins contribute 0.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, s = _pair(y_true, scores, probabilities=True)
    if not s.size:
        return NAN
    return float(_metrics_rows(s[None, :], y[None, :], 0.5, n_bins)["ece"][0])


class CalibrationCurve(NamedTuple):
    """Reliability-diagram data; per-bin arrays have length ``n_bins`` (``nan`` for empty bins)."""

    mean_predicted: np.ndarray
    observed_rate: np.ndarray
    count: np.ndarray
    bin_edges: np.ndarray


def calibration_curve(y_true: Any, scores: Any, n_bins: int = ECE_BINS) -> CalibrationCurve:
    """Per-bin mean predicted probability, observed positive rate and item count (equal-width bins)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    y, s = _pair(y_true, scores, probabilities=True)
    bins = _bin_index(s, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    sum_pred = np.bincount(bins, weights=s, minlength=n_bins)
    sum_pos = np.bincount(bins, weights=y.astype(np.float64), minlength=n_bins)
    return CalibrationCurve(
        mean_predicted=_safe_div(sum_pred, count),
        observed_rate=_safe_div(sum_pos, count),
        count=count.astype(np.int64),
        bin_edges=np.linspace(0.0, 1.0, n_bins + 1),
    )


# --------------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------------


def percentile_ci(values: Any, level: float = 0.95) -> CI:
    """Percentile interval of the finite values; ``(nan, nan)`` if there are none."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if not v.size:
        return (NAN, NAN)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(v, [100.0 * alpha, 100.0 * (1.0 - alpha)])
    return (float(lo), float(hi))


def _bootstrap_rows(
    y: np.ndarray, s: np.ndarray, threshold: float, n_boot: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    pos_idx = np.flatnonzero(y == 1)
    neg_idx = np.flatnonzero(y == 0)
    n = y.size
    if n_boot == 0 or n == 0:
        return {m: np.full(n_boot, np.nan) for m in METRICS}
    out = {m: np.empty(n_boot) for m in METRICS}
    chunk = max(1, _CHUNK_ELEMENTS // n)
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = np.concatenate(
            [
                pos_idx[rng.integers(0, pos_idx.size, size=(rows, pos_idx.size))],
                neg_idx[rng.integers(0, neg_idx.size, size=(rows, neg_idx.size))],
            ],
            axis=1,
        )
        res = _metrics_rows(s[idx], y[idx], threshold)
        for m in METRICS:
            out[m][start : start + rows] = res[m]
    return out


def _group_rng(seed: int, group: str) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    return np.random.default_rng([int(seed), _SEED_KEYS.get(group, 99)])


def bootstrap_metrics(
    y_true: Any,
    scores: Any,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    group: str = "overall",
) -> dict[str, np.ndarray]:
    """Stratified-bootstrap replicates of every metric: ``{metric: array of n_boot values}``.

    Positives and negatives are resampled with replacement separately. The random stream is derived from
    ``(seed, group)``, exactly as :func:`audit` does, so passing a group's data and name reproduces the
    replicates behind that group's intervals. Scores must be probabilities in [0, 1].
    """
    y, s = _pair(y_true, scores, probabilities=True)
    t = _check_threshold(threshold)
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    return _bootstrap_rows(y, s, t, int(n_boot), _group_rng(seed, group))


# --------------------------------------------------------------------------------------------------
# Audit results
# --------------------------------------------------------------------------------------------------


def is_sufficient(n: int, n_pos: int) -> bool:
    """Whether a group is large enough to report: n >= 30, >= 5 positives and >= 5 negatives."""
    return n >= MIN_GROUP_N and n_pos >= MIN_CLASS_N and (n - n_pos) >= MIN_CLASS_N


def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _from_json_float(x: Any) -> float:
    return NAN if x is None else float(x)


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics of one skin-type group (or of everybody, ``group='overall'``) at the audit threshold."""

    group: str
    n: int
    n_pos: int
    auroc: float
    auroc_ci95: CI
    sensitivity: float
    sensitivity_ci95: CI
    specificity: float
    specificity_ci95: CI
    ppv: float
    ppv_ci95: CI
    npv: float
    npv_ci95: CI
    ece: float
    ece_ci95: CI
    brier: float
    brier_ci95: CI
    sufficient: bool
    fst_source: str
    n_label: int = 0  # of the group's skin types, how many came from a label ...
    n_estimated: int = 0  # ... and how many from the image-based estimate

    @property
    def n_neg(self) -> int:
        return self.n - self.n_pos

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN -> None); the group name is the key it is stored under, not a field."""
        d: dict[str, Any] = {"n": int(self.n), "n_pos": int(self.n_pos)}
        for m in METRICS:
            d[m] = _json_float(getattr(self, m))
            lo, hi = getattr(self, f"{m}_ci95")
            d[f"{m}_ci95"] = [_json_float(lo), _json_float(hi)]
        d["sufficient"] = bool(self.sufficient)
        d["fst_source"] = self.fst_source
        d["n_fst_label"] = int(self.n_label)
        d["n_fst_estimated"] = int(self.n_estimated)
        return d

    @classmethod
    def from_dict(cls, group: str, d: Mapping[str, Any]) -> GroupMetrics:
        kwargs: dict[str, Any] = {}
        for m in METRICS:
            kwargs[m] = _from_json_float(d[m])
            lo, hi = d[f"{m}_ci95"]
            kwargs[f"{m}_ci95"] = (_from_json_float(lo), _from_json_float(hi))
        return cls(
            group=group,
            n=int(d["n"]),
            n_pos=int(d["n_pos"]),
            sufficient=bool(d["sufficient"]),
            fst_source=str(d["fst_source"]),
            n_label=int(d.get("n_fst_label", 0)),
            n_estimated=int(d.get("n_fst_estimated", 0)),
            **kwargs,
        )


@dataclass(frozen=True)
class AuditResult:
    """Outcome of :func:`audit`. ``groups`` is ordered I..VI then 'unknown' and holds only groups present."""

    overall: GroupMetrics
    groups: dict[str, GroupMetrics]
    auroc_gap: float
    auroc_gap_ci95: CI
    sensitivity_gap: float
    threshold: float
    model: str | None = None
    gap_groups: tuple[str, ...] = field(default=())
    """The sufficient, non-'unknown' groups the gaps were taken over (not serialised; derivable)."""
    grouping: str = "type"

    def to_dict(self, model: str | None = None) -> dict[str, Any]:
        """JSON-ready dict (NaN -> None). ``model`` overrides the stored model name if given."""
        lo, hi = self.auroc_gap_ci95
        return {
            "model": model if model is not None else self.model,
            "threshold": float(self.threshold),
            "overall": self.overall.to_dict(),
            "groups": {name: gm.to_dict() for name, gm in self.groups.items()},
            "auroc_gap": _json_float(self.auroc_gap),
            "auroc_gap_ci95": [_json_float(lo), _json_float(hi)],
            "sensitivity_gap": _json_float(self.sensitivity_gap),
            "grouping": self.grouping,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AuditResult:
        """Inverse of :meth:`to_dict` (None -> NaN)."""
        groups = {name: GroupMetrics.from_dict(name, g) for name, g in d["groups"].items()}
        grouping = str(d.get("grouping", "type"))
        lo, hi = d["auroc_gap_ci95"]
        return cls(
            overall=GroupMetrics.from_dict("overall", d["overall"]),
            groups=groups,
            auroc_gap=_from_json_float(d["auroc_gap"]),
            auroc_gap_ci95=(_from_json_float(lo), _from_json_float(hi)),
            sensitivity_gap=_from_json_float(d["sensitivity_gap"]),
            threshold=float(d["threshold"]),
            model=d.get("model"),
            gap_groups=tuple(g for g in group_order(grouping) if g != "unknown" and g in groups and groups[g].sufficient),
            grouping=grouping,
        )


def _fst_sources(fst_source: Any, n: int) -> np.ndarray | str:
    if fst_source is None:
        return "label"
    if isinstance(fst_source, str):
        if fst_source not in _FST_SOURCES:
            raise ValueError(f"fst_source must be 'label' or 'estimated', got {fst_source!r}")
        return fst_source
    src = np.asarray(list(fst_source), dtype=object)
    if src.shape != (n,):
        raise ValueError(f"fst_source must be a string or one entry per item ({n}), got {src.shape}")
    bad = sorted({str(v) for v in src if v not in _FST_SOURCES})
    if bad:
        raise ValueError(f"fst_source entries must be 'label' or 'estimated', got {bad}")
    return src


def _source_of(src: np.ndarray | str, mask: np.ndarray) -> str:
    if isinstance(src, str):
        return src
    present = set(src[mask].tolist())
    return present.pop() if len(present) == 1 else "mixed"


def _source_counts(src: np.ndarray | str, mask: np.ndarray) -> tuple[int, int]:
    """(from a label, estimated) among the masked items."""
    n = int(mask.sum())
    if isinstance(src, str):
        return (n, 0) if src == "label" else (0, n)
    n_label = int(np.sum(src[mask] == "label"))
    return n_label, n - n_label


def _group_metrics(
    name: str,
    y: np.ndarray,
    s: np.ndarray,
    threshold: float,
    n_boot: int,
    seed: int,
    fst_source: str,
    counts: tuple[int, int] = (0, 0),
) -> tuple[GroupMetrics, dict[str, np.ndarray]]:
    point = _metrics_rows(s[None, :], y[None, :], threshold)
    boots = _bootstrap_rows(y, s, threshold, n_boot, _group_rng(seed, name))
    n = int(y.size)
    n_pos = int(y.sum())
    kwargs: dict[str, Any] = {}
    for m in METRICS:
        kwargs[m] = float(point[m][0])
        kwargs[f"{m}_ci95"] = percentile_ci(boots[m])
    gm = GroupMetrics(
        group=name,
        n=n,
        n_pos=n_pos,
        sufficient=is_sufficient(n, n_pos),
        fst_source=fst_source,
        n_label=counts[0],
        n_estimated=counts[1],
        **kwargs,
    )
    return gm, boots


def audit(
    scores: Any,
    y_true: Any,
    groups: Sequence[Any] | Iterable[Any],
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    fst_source: str | Sequence[str] | None = None,
    *,
    model: str | None = None,
    grouping: str = "type",
) -> AuditResult:
    """Audit malignancy ``scores`` (probabilities) against ``y_true`` (0/1) per Fitzpatrick group.

    ``groups`` holds one skin type per item in any form :func:`parse_fst` accepts. ``fst_source`` says where
    the skin types came from: ``None``/'label' (clinician-recorded), 'estimated' (from pixels), or one of
    those per item, in which case a group mixing both is reported as 'mixed' (with its counts).
    ``grouping``: ``'type'`` (I..VI) or ``'ddi'`` (I-II / III-IV / V-VI), see :func:`group_of`.

    ``auroc_gap`` and ``sensitivity_gap`` are max - min over the sufficient groups I..VI (``nan`` when fewer
    than two are sufficient); ``auroc_gap_ci95`` is the percentile interval of the gap recomputed on each
    joint resample, built from the same per-group resamples as the groups' own intervals.
    """
    s = _as_scores(scores, probabilities=True)
    y = _as_labels(y_true)
    order = group_order(grouping)
    g = np.asarray([group_of(v, grouping) for v in groups], dtype=object)
    if not (s.size == y.size == g.size):
        raise ValueError(f"scores, y_true and groups differ in length: {s.size}, {y.size}, {g.size}")
    if not s.size:
        raise ValueError("cannot audit an empty set")
    t = _check_threshold(threshold)
    if isinstance(n_boot, bool) or int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}")
    n_boot = int(n_boot)
    src = _fst_sources(fst_source, s.size)

    everyone = np.ones(s.size, dtype=bool)
    overall, _ = _group_metrics("overall", y, s, t, n_boot, seed, _source_of(src, everyone),
                                _source_counts(src, everyone))
    per_group: dict[str, GroupMetrics] = {}
    boots: dict[str, dict[str, np.ndarray]] = {}
    for name in order:
        mask = g == name
        if not mask.any():
            continue
        per_group[name], boots[name] = _group_metrics(
            name, y[mask], s[mask], t, n_boot, seed, _source_of(src, mask), _source_counts(src, mask)
        )

    gap_groups = tuple(name for name in order
                       if name != "unknown" and name in per_group and per_group[name].sufficient)
    if len(gap_groups) >= 2:
        aucs = np.array([per_group[name].auroc for name in gap_groups])
        sens = np.array([per_group[name].sensitivity for name in gap_groups])
        auroc_gap = float(aucs.max() - aucs.min())
        sensitivity_gap = float(sens.max() - sens.min())
        if n_boot:
            # Sufficient groups keep >= 5 of each class in every stratified resample: AUROC always defined.
            boot_aucs = np.stack([boots[name]["auroc"] for name in gap_groups])
            gap_ci = percentile_ci(boot_aucs.max(axis=0) - boot_aucs.min(axis=0))
        else:
            gap_ci = (NAN, NAN)
    else:
        auroc_gap = sensitivity_gap = NAN
        gap_ci = (NAN, NAN)

    return AuditResult(
        overall=overall,
        groups=per_group,
        auroc_gap=auroc_gap,
        auroc_gap_ci95=gap_ci,
        sensitivity_gap=sensitivity_gap,
        threshold=t,
        model=model,
        gap_groups=gap_groups,
        grouping=grouping,
    )
