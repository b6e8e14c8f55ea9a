"""compression.domain: the out-of-scope check (logistic regression on pooled block14 features).

Synthetic features whose answer is known in advance, the real fit on ../shared/data (with the cached reference
features), and the bundled card's entry."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from compression.domain import (
    FEATURES,
    METHOD,
    SEPARATES_AT,
    fit_logistic_domain_check,
    load_sidecar,
    logistic_scores,
    mahalanobis_baseline,
    scope_labels,
)
from tests.conftest import REPO, SHARED_DATA

#: Every field of the card entry (app.quality reads method, sidecar, sidecar_sha256, threshold).
ENTRY_FIELDS = {"method", "features", "sidecar", "sidecar_sha256", "threshold", "score", "trained_on", "calibration",
                "gate", "summary"}


def _records(n: int) -> list[SimpleNamespace]:
    """A cycle of ISIC, PAD, Fitzpatrick17k malignant/benign/non-neoplastic records (period 5)."""
    kinds = [("isic", None), ("pad", None), ("fitz", "malignant"), ("fitz", "benign"), ("fitz", "non-neoplastic")]
    return [SimpleNamespace(dataset=kinds[i % 5][0], extra={"three_partition": kinds[i % 5][1]} if kinds[i % 5][1]
                            else {}) for i in range(n)]


def _data(shift: float, seed: int = 0, n: int = 2100, c: int = 20):
    """Lesion rows ~ N(0, 1); non-neoplastic rows shifted by ``shift`` along the first 3 axes. Splits cycle with
    period 7 (coprime to the records' 5), so every split holds every kind."""
    rng = np.random.default_rng(seed)
    recs = _records(n)
    oos, _, _ = scope_labels(recs)
    x = rng.normal(size=(n, c))
    x[oos, :3] += shift
    x = x * np.geomspace(5, 0.2, c) + 3.0  # unequal scales and an offset: the standardisation matters
    split = np.array((["train"] * 4 + ["select", "gate", "gate"]) * (n // 7 + 1))[:n]
    return x.astype(np.float32), recs, split


def test_scope_labels():
    oos, les, ds = scope_labels(_records(5) + [SimpleNamespace(dataset="fitz", extra={})])
    assert oos.tolist() == [False, False, False, False, True, False]
    assert les.tolist() == [True, True, True, True, False, False]  # a Fitzpatrick17k photo without a partition: neither
    assert ds.tolist() == ["isic", "pad", "fitz", "fitz", "fitz", "fitz"]


def test_a_real_difference_is_found_and_said_so(tmp_path):
    x, recs, split = _data(shift=2.0)
    entry = fit_logistic_domain_check(x, recs, split, tmp_path / "m.domain.npz", n_boot=200)
    assert ENTRY_FIELDS <= set(entry) and entry["method"] == METHOD and entry["features"] == FEATURES
    g = entry["gate"]
    assert g["fitzpatrick17k"]["auroc"] > 0.95 and g["separates"]
    assert g["fitzpatrick17k"]["auroc_ci95"][0] <= g["fitzpatrick17k"]["auroc"] <= g["fitzpatrick17k"]["auroc_ci95"][1]
    assert "separates" in entry["summary"] and "NOT" not in entry["summary"]
    assert entry["sidecar"] == "m.domain.npz"
    assert entry["sidecar_sha256"] == hashlib.sha256((tmp_path / "m.domain.npz").read_bytes()).hexdigest()
    assert entry["calibration"]["c"] in entry["calibration"]["c_grid"]
    n_train = int((split == "train").sum())
    assert entry["trained_on"]["n_positive"] + entry["trained_on"]["n_negative"] == n_train
    # the threshold flags 5% of the select split's lesions by construction; the scores are the sidecar's
    s = logistic_scores(x, **load_sidecar(tmp_path / "m.domain.npz"))
    oos, les, _ = scope_labels(recs)
    assert (s[(split == "select") & les] >= entry["threshold"]).mean() == pytest.approx(0.05, abs=0.01)
    fl = g["flagged"]
    assert fl["fitzpatrick17k_non_neoplastic"]["share"] > 0.8 and fl["fitzpatrick17k_lesions"]["share"] < 0.15
    assert set(fl) == {"fitzpatrick17k_non_neoplastic", "isic_lesions", "pad_lesions", "fitzpatrick17k_lesions",
                       "all_lesions"}
    assert fl["fitzpatrick17k_non_neoplastic"]["n"] == int(((split == "gate") & oos).sum())
    assert fl["all_lesions"]["flagged"] == sum(fl[k]["flagged"] for k in ("isic_lesions", "pad_lesions",
                                                                            "fitzpatrick17k_lesions"))
    json.dumps(entry)  # the card is JSON


def test_no_difference_is_reported_as_not_separating(tmp_path):
    x, recs, split = _data(shift=0.0)
    entry = fit_logistic_domain_check(x, recs, split, tmp_path / "n.domain.npz", n_boot=200)
    assert 0.35 < entry["gate"]["fitzpatrick17k"]["auroc"] < 0.65 and not entry["gate"]["separates"]
    assert "does NOT reliably separate" in entry["summary"]


def test_measured_on_the_shipped_models_own_features(tmp_path):
    """With ``fp32_features`` (the reference's) beside ``features`` (the INT8 model's, here a distorted copy), the
    fit uses both, and C, the threshold and ``gate`` come from ``features``; the FP32 gate is reported beside."""
    x32, recs, split = _data(shift=2.0)
    rng = np.random.default_rng(5)
    x8 = 0.7 * x32 + rng.normal(scale=0.8, size=x32.shape)  # quantization-like: shrunk and noisy
    entry = fit_logistic_domain_check(x8, recs, split, tmp_path / "q.domain.npz", fp32_features=x32, n_boot=100)
    assert entry["trained_on"]["feature_sets"] == ["the model's own (INT8 backbone)", "the FP32 reference network's"]
    assert entry["gate"]["measured_on"] == "the model's own (INT8) features"
    assert "On the model's own (INT8) features" in entry["summary"]
    p = load_sidecar(tmp_path / "q.domain.npz")
    s8, s32 = logistic_scores(x8, **p), logistic_scores(x32, **p)
    _, les, _ = scope_labels(recs)
    sel = (split == "select") & les
    assert entry["threshold"] == pytest.approx(float(np.quantile(s8[sel], 0.95)))  # on the INT8 features
    g32 = entry["gate_fp32_reference"]
    oos, _, _ = scope_labels(recs)
    gate_oos = (split == "gate") & oos
    assert g32["flagged"]["fitzpatrick17k_non_neoplastic"]["flagged"] == int((s32[gate_oos] >= entry["threshold"]).sum())
    assert entry["gate"]["flagged"]["fitzpatrick17k_non_neoplastic"]["flagged"] == int(
        (s8[gate_oos] >= entry["threshold"]).sum())
    assert entry["gate"]["fitzpatrick17k"]["auroc"] > 0.8 and g32["fitzpatrick17k"]["auroc"] > 0.9
    with pytest.raises(ValueError, match="one entry per record"):
        fit_logistic_domain_check(x8, recs, split, tmp_path / "x.npz", fp32_features=x32[:, :3])


def test_domain_check_for_ship_writes_the_named_sidecar(tmp_path, monkeypatch):
    """The ship stage's call: features from the cache (stubbed here), ``<name>.domain.npz`` in ``out_dir``, the
    provenance in ``trained_on``; with ``int8_path`` the model's own features are the measured ones."""
    from compression import domain

    x32, recs, split = _data(shift=2.0)
    x8 = x32 + 0.1
    sd = SimpleNamespace(records=recs, split=list(split), sha256="s" * 64,
                         rows=lambda name: np.flatnonzero(split == name))
    monkeypatch.setattr(domain, "_features", lambda *a, **k: SimpleNamespace(pools={"block14": x32}, key="k32"))
    monkeypatch.setattr(domain, "model_features", lambda *a, **k: (x8, ["k8a", "k8b"]))
    (tmp_path / "ref.onnx").write_bytes(b"ref")
    (tmp_path / "m8.onnx").write_bytes(b"int8")
    logged: list[str] = []
    e = domain.domain_check_for_ship(sd, tmp_path / "ref.onnx", tmp_path / "cache", tmp_path / "out", "mx",
                                     logged.append, n_boot=50)
    assert e["sidecar"] == "mx.domain.npz" and (tmp_path / "out" / "mx.domain.npz").is_file()
    assert e["trained_on"]["split_manifest_sha256"] == "s" * 64 and e["trained_on"]["feature_cache_key"] == "k32"
    assert e["trained_on"]["reference_fp32_sha256"] == hashlib.sha256(b"ref").hexdigest()
    assert "gate_fp32_reference" not in e and logged and logged[0].startswith("domain: ")
    e8 = domain.domain_check_for_ship(sd, tmp_path / "ref.onnx", tmp_path / "cache", tmp_path / "out", "mx",
                                      logged.append, int8_path=tmp_path / "m8.onnx", n_boot=50)
    assert e8["trained_on"]["model_sha256"] == hashlib.sha256(b"int8").hexdigest()
    assert e8["trained_on"]["model_feature_cache_keys"] == ["k8a", "k8b"] and "gate_fp32_reference" in e8
    s8 = logistic_scores(x8, **load_sidecar(tmp_path / "out" / "mx.domain.npz"))
    _, les, _ = scope_labels(recs)
    assert e8["threshold"] == pytest.approx(float(np.quantile(s8[(split == "select") & les], 0.95)))


def test_logistic_scores_by_hand(tmp_path):
    """mean (1, 2, 3), scale (1, 2, 4), coef (1, -1, 0.5), intercept -0.5: hand-worked values."""
    p = {"mean": np.array([1.0, 2, 3]), "scale": np.array([1.0, 2, 4]), "coef": np.array([1.0, -1, 0.5]),
         "intercept": np.array([-0.5])}
    x = np.array([[2.0, 4, 7],    # z = (1, 1, 1) . coef - 0.5 = 0       -> 0.5
                  [1.0, 2, 3],    # z = -0.5                           -> 1 / (1 + e^0.5)
                  [3.0, 0, 3]])   # z = (2, -1, 0) . coef - 0.5 = 2.5    -> 1 / (1 + e^-2.5)
    assert logistic_scores(x, **p) == pytest.approx([0.5, 0.3775406687981454, 0.9241418199787566], abs=1e-12)
    np.savez(tmp_path / "h.domain.npz", **p)
    assert logistic_scores(x, **load_sidecar(tmp_path / "h.domain.npz")) == pytest.approx(logistic_scores(x, **p))
    # no overflow far out
    assert logistic_scores(np.array([[1e6, -1e6, 0.0]]), **p) == pytest.approx([1.0])
    assert logistic_scores(np.array([[-1e6, 1e6, 0.0]]), **p) == pytest.approx([0.0])


def test_bad_inputs(tmp_path):
    x, recs, split = _data(shift=1.0)
    with pytest.raises(ValueError, match="one entry per record"):
        fit_logistic_domain_check(x[:-1], recs, split, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="too few"):
        fit_logistic_domain_check(x, recs, np.array(["gate"] * len(x)), tmp_path / "x.npz")


def test_the_distance_baseline_it_replaced():
    """The PCA-Mahalanobis distance (measured beside the logistic check in the results JSON): it finds a shift
    along the widest axes and reports no separation without one."""
    x, recs, split = _data(shift=2.0)
    base = mahalanobis_baseline(x, recs, split, components=(4, 8), n_boot=100)
    assert base["n_components"] in (4, 8) and set(base["select_auroc_by_k"]) == {"4", "8"}
    assert base["gate_fitzpatrick17k"]["auroc"] > 0.8
    x, recs, split = _data(shift=0.0)
    base = mahalanobis_baseline(x, recs, split, components=(4,), n_boot=100)
    assert 0.35 < base["gate_fitzpatrick17k"]["auroc"] < 0.65 and not base["separates"]


def test_a_replaced_bundle_takes_its_domain_sidecar_along(tmp_path):
    """ship's bundle file list names the card's domain sidecar: removing the old model removes it, keeping the new
    model keeps its own."""
    from compression.ship import _bundle_files, remove_other_bundles

    for stem in ("old", "new"):
        (tmp_path / f"{stem}.onnx").write_bytes(b"m")
        (tmp_path / f"{stem}.domain.npz").write_bytes(b"d")
        (tmp_path / f"{stem}.json").write_text(json.dumps({"file": f"{stem}.onnx", "domain_check": {
            "method": METHOD, "sidecar": f"{stem}.domain.npz"}}), encoding="utf-8")
    assert tmp_path / "new.domain.npz" in _bundle_files(tmp_path / "new.json")
    removed = remove_other_bundles(tmp_path, tmp_path / "new.json", log=lambda _: None)
    assert {p.name for p in removed} == {"old.json", "old.onnx", "old.domain.npz"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.domain.npz", "new.json", "new.onnx"]


# ------------------------------------------------------------------------------------------ real data


def test_fit_on_real_data_separates_non_neoplastic_photos(tmp_path):
    """Fit on the configured split with the reference network's cached features; the gate AUROC is >= 0.8 (measured
    0.846, 95% CI 0.816-0.873, on the committed split). The features are never extracted here (10+ minutes): the
    test skips unless the adapt stage's cache (``runs/adapt-cache``, or ``MENDICANT_ADAPT_CACHE``) holds them."""
    if not (SHARED_DATA / "isic_dermoscopy" / "labels.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data beside the repo)")
    pytest.importorskip("sklearn")
    from compression import adapt
    from compression.config import load_config
    from compression.domain import cached_reference_features
    from compression.validate import default_teacher

    fp32 = default_teacher()
    if not fp32.is_file():
        pytest.skip(f"the reference network in FP32 is not built ({fp32}; python -m compression adapt builds it)")
    cache = Path(os.environ.get("MENDICANT_ADAPT_CACHE", REPO / "runs" / "adapt-cache"))
    sd = adapt.load_split(load_config())
    feats = cached_reference_features(sd, fp32, cache)
    if feats is None:
        pytest.skip(f"{cache} does not hold the reference features of the current split (run `python -m compression "
                    "adapt` or `python -m compression.domain --out-dir DIR`, or set MENDICANT_ADAPT_CACHE)")
    entry = fit_logistic_domain_check(feats.pools["block14"], sd.records, sd.split, tmp_path / "r.domain.npz",
                                      n_boot=200)
    assert ENTRY_FIELDS <= set(entry)
    g = entry["gate"]
    assert g["fitzpatrick17k"]["auroc"] >= 0.8, entry["summary"]
    assert g["separates"] == (g["fitzpatrick17k"]["auroc_ci95"][0] >= SEPARATES_AT)
    assert g["fitzpatrick17k"]["n_out_of_scope"] > 200 and g["fitzpatrick17k"]["n_lesions"] > 400
    assert g["flagged"]["fitzpatrick17k_non_neoplastic"]["share"] > 0.4
    assert g["flagged"]["isic_lesions"]["share"] < 0.05 and g["flagged"]["pad_lesions"]["share"] < 0.05
    assert entry["calibration"]["select_auroc"] >= 0.8


# ------------------------------------------------------------------------------------------ the bundled card


def _bundled_cards() -> list[Path]:
    return sorted((REPO / "resources" / "models").glob("*.json"))


_OLD_CARD = any("fairprune" in p.name for p in _bundled_cards())


@pytest.mark.xfail(_OLD_CARD, strict=True,
                   reason="the bundled model is still the fairprune student, shipped before the out-of-scope check: "
                          "its card has no domain_check. Shipping the adapted model (compression ship) writes it; "
                          "then this test must pass")
def test_card_has_domain_check():
    cards = _bundled_cards()
    assert len(cards) == 1, cards
    card = json.loads(cards[0].read_text(encoding="utf-8"))
    check = card.get("domain_check")
    assert isinstance(check, dict), f"{cards[0].name} has no domain_check"
    assert check["method"] == METHOD and ENTRY_FIELDS <= set(check)
    side = cards[0].parent / check["sidecar"]
    assert hashlib.sha256(side.read_bytes()).hexdigest() == check["sidecar_sha256"]
    assert 0.0 < float(check["threshold"]) < 1.0
