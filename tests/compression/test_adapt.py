"""The adapted teacher's pieces: three-way split, composition, linear-head graft, gate checks, kernel check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from compression import adapt
from compression.adapt import MAL_IDX, Record, compose, ddi_group, three_way_split
from compression.gate import _check, agreement_checks, agreement_failures, gate_checks, validate_result
from mendicant_desktop.core.cpu import cpu_features, describe_cpu
from mendicant_desktop.core.errors import ModelVerificationError
from mendicant_desktop.core.selfcheck import SelfCheck, load_self_check, run_self_check

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _records() -> list[Record]:
    recs = []
    for i in range(40):
        recs.append(Record(dataset="isic", pool="external", image=f"e{i}", relpath=f"e{i}", dx="MEL" if i % 2 else "NV",
                           dx7="mel" if i % 2 else "nv", label=4 if i % 2 else 5, malignant=i % 2))
    for i in range(10):
        recs.append(Record(dataset="isic", pool="ham10000", image=f"h{i}", relpath=f"h{i}", dx="BCC", dx7="bcc",
                           label=1, malignant=1))
    for p in range(30):  # 30 patients, 2 images each
        for k in range(2):
            recs.append(Record(dataset="pad", pool="pad", image=f"p{p}_{k}", relpath=f"p{p}_{k}", dx="BCC",
                               dx7="bcc", label=1, malignant=p % 2, patient_id=f"P{p}", fst=("II", "III")[p % 2],
                               fst_source="label"))
    for g in range(40):  # 40 duplicate groups of 1-3 images
        for k in range(1 + g % 3):
            recs.append(Record(dataset="fitz", pool="fitz", image=f"f{g}_{k}", relpath=f"f{g}_{k}", dx="acne", dx7="",
                               label=-1, malignant=g % 2, patient_id=f"G{g}", fst=("I", "IV", "VI")[g % 3],
                               fst_source="label"))
    return recs


def test_three_way_split_is_deterministic_grouped_and_keeps_ham_in_train() -> None:
    recs = _records()
    a = three_way_split(recs, select=0.2, gate=0.3, seed=7)
    assert a == three_way_split(recs, select=0.2, gate=0.3, seed=7)
    assert a != three_way_split(recs, select=0.2, gate=0.3, seed=8)
    assert set(a) == {"train", "select", "gate"}
    for r, s in zip(recs, a):
        if r.pool == "ham10000":
            assert s == "train"
    for ds in ("pad", "fitz"):  # a patient / duplicate group never spans two splits
        by: dict[str, set[str]] = {}
        for r, s in zip(recs, a):
            if r.dataset == ds:
                by.setdefault(r.patient_id, set()).add(s)
        assert all(len(v) == 1 for v in by.values())
    ext = [s for r, s in zip(recs, a) if r.pool == "external"]
    assert ext.count("gate") == 12 and ext.count("select") == 8  # round(40 * 0.3), round(40 * 0.2)


def test_ddi_groups() -> None:
    assert [ddi_group(f) for f in ("I", "II", "III", "IV", "V", "VI", "unknown")] == [
        "I-II", "I-II", "III-IV", "III-IV", "V-VI", "V-VI", "unknown"]


def test_compose_makes_the_malignant_share_equal_the_direct_output() -> None:
    rng = np.random.default_rng(0)
    z7 = rng.normal(size=(5, 7)) * 3
    zm = rng.normal(size=5) * 2
    p = compose(z7, zm)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p[:, list(MAL_IDX)].sum(1), 1 / (1 + np.exp(-zm)), atol=1e-6)
    # Within each side the 7-class head's order is kept.
    q = np.exp(z7) / np.exp(z7).sum(1, keepdims=True)
    for i in range(5):
        np.testing.assert_array_equal(np.argsort(p[i, list(MAL_IDX)]), np.argsort(q[i, list(MAL_IDX)]))
    # A fixed case worked by hand: equal logits, m = 0.5 -> each malignant class 1/6, each benign 1/8.
    np.testing.assert_allclose(compose(np.zeros((1, 7)), np.zeros(1))[0],
                               [1 / 6, 1 / 6, 1 / 8, 1 / 8, 1 / 6, 1 / 8, 1 / 8], atol=1e-6)


class _Gate:
    max_auroc_drop = 0.02
    max_gap_increase = 0.005
    max_size_mb = 30.0
    max_latency_ratio = 0.5


def _ev(auroc: float, gap: float) -> dict:
    return {q: {"auroc": auroc, "gap": gap} for q in ("isic_mel_vs_nv", "pad_fst_labelled", "fitz_malignant")}


def test_gate_checks_fail_on_uncomputable_values_and_pass_within_limits() -> None:
    ok = gate_checks(_ev(0.80, 0.03), _ev(0.81, 0.03), 20.0, 0.4, _Gate)
    assert all(c["met"] for c in ok) and len(ok) == 7
    worse = gate_checks(_ev(0.78, 0.03), _ev(0.81, 0.03), 20.0, 0.4, _Gate)
    assert [c["met"] for c in worse][:3] == [False, False, False]
    nan = gate_checks(_ev(float("nan"), float("nan")), _ev(0.81, 0.03), 20.0, 0.4, _Gate)
    assert not any(c["met"] for c in nan[:5])
    assert all("not computable" in c["note"] for c in nan[:5])
    teacher_nan = gate_checks(_ev(0.8, 0.01), _ev(0.81, float("nan")), 20.0, 0.4, _Gate)
    assert [c["met"] for c in teacher_nan][3:5] == [False, False]
    assert not _check("size MB", 30.0, "<", 30.0)["met"]
    assert not gate_checks(_ev(0.8, 0.01), _ev(0.81, 0.01), 20.0, 0.51, _Gate)[-1]["met"]


class _Cfg:
    gate = _Gate


def test_ship_refuses_a_gate_result_missing_a_limit_or_on_another_split() -> None:
    good = {"top1_agreement": 0.98, "malignancy_spearman": 0.99,
            "delta_auroc": {"isic_mel_vs_nv": 0.0, "pad_fst_labelled": 0.0, "fitz_malignant": -0.005}}
    checks = gate_checks(_ev(0.80, 0.03), _ev(0.81, 0.03), 20.0, 0.4, _Gate) + agreement_checks(good)
    res = {"gate_passed": True, "checks": checks, "split": {"sha256": "s"}, "candidate": {"sha256": "m"},
           "gate_limits": {"max_auroc_drop": 0.02, "max_gap_increase": 0.005, "max_size_mb": 30.0,
                           "max_latency_ratio": 0.5}}
    assert validate_result(res, _Cfg, split_sha="s", model_sha="m") == []
    assert "another split" in " ".join(validate_result(res, _Cfg, split_sha="t", model_sha="m"))
    assert "another model" in " ".join(validate_result(res, _Cfg, split_sha="s", model_sha="x"))
    loose = {**res, "gate_limits": {**res["gate_limits"], "max_auroc_drop": 0.05}}
    assert "looser" in " ".join(validate_result(loose, _Cfg, split_sha="s", model_sha="m"))
    missing = {**res, "gate_limits": {k: v for k, v in res["gate_limits"].items() if k != "max_size_mb"}}
    assert "lacks the limit max_size_mb" in " ".join(validate_result(missing, _Cfg, split_sha="s", model_sha="m"))
    fewer = {**res, "checks": checks[:-1]}
    assert "lacks checks" in " ".join(validate_result(fewer, _Cfg, split_sha="s", model_sha="m"))
    computed = {**res, "probabilities": {"candidate": "computed", "teacher": "computed"}}
    assert validate_result(computed, _Cfg, split_sha="s", model_sha="m") == []
    given = {**res, "probabilities": {"candidate": "computed", "teacher": "given"}}  # the test suite's shortcut
    assert validate_result(given, _Cfg, split_sha="s", model_sha="m") == [
        "the gate was run on probabilities passed in, not computed by it"]


def test_agreement_is_gated() -> None:
    bad = {"top1_agreement": 0.69, "malignancy_spearman": 0.84,
           "delta_auroc": {"isic_mel_vs_nv": -0.014, "pad_fst_labelled": -0.036, "fitz_malignant": float("nan")}}
    assert [c["met"] for c in agreement_checks(bad)] == [False, False, False, False, False]


def test_agreement_failures() -> None:
    good = {"top1_agreement": 0.98, "malignancy_spearman": 0.99, "delta_auroc": {"a": 0.004, "b": -0.009}}
    assert agreement_failures(good) == []
    bad = {"top1_agreement": 0.96, "malignancy_spearman": float("nan"), "delta_auroc": {"a": -0.011}}
    assert len(agreement_failures(bad)) == 3


def test_cpu_features_are_reported() -> None:
    f = cpu_features()
    assert isinstance(f["machine"], str) and isinstance(f["VNNI"], bool)
    assert "VNNI" in describe_cpu()


def test_synthetic_check_images_are_deterministic_lesion_like() -> None:
    a, b = adapt.synthetic_check_images(4), adapt.synthetic_check_images(4)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (4, 254, 254, 3) and a.dtype == np.uint8
    centre, border = a[:, 100:154, 100:154].mean(), a[:, :20].mean()
    assert centre < border - 20  # a darker lesion on lighter skin


def _check_file(tmp_path: Path, probs: np.ndarray, tol: float) -> dict:
    import hashlib

    p = tmp_path / "m.selfcheck.npz"
    np.savez(p, image=np.zeros((len(probs), 8, 8, 3), np.uint8), meta=np.zeros((len(probs), 10), np.float32),
             probs_reference=probs.astype(np.float32))
    return {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "tolerance": tol}


def test_self_check_passes_fails_and_verifies_its_file(tmp_path: Path) -> None:
    ref = np.array([[0.7, 0.3], [0.2, 0.8]], np.float32)
    spec = _check_file(tmp_path, ref, 0.05)
    check = load_self_check(tmp_path, spec)
    assert isinstance(check, SelfCheck)
    same = run_self_check(lambda x, m: (ref + 0.01, None), check)
    assert same.passed and math.isclose(same.max_abs_diff, 0.01, abs_tol=1e-6) and same.top1_agreement == 1.0
    assert "passed" in same.summary() and describe_cpu() in same.summary()
    off = run_self_check(lambda x, m: (ref[:, ::-1].copy(), None), check)
    assert off.status == "failed" and off.top1_agreement == 0.0
    assert "cannot be trusted" in off.refusal("m")
    assert run_self_check(lambda x, m: (ref, None), None).status == "absent"
    with pytest.raises(ModelVerificationError, match="sha256"):
        load_self_check(tmp_path, {**spec, "sha256": "0" * 64})
    with pytest.raises(ModelVerificationError, match="malformed"):
        load_self_check(tmp_path, {"file": spec["file"]})


def test_self_check_holds_this_cpu_to_the_build_machines_int8_outputs(tmp_path: Path) -> None:
    """The tight half of the check: FP32 reference 0.7/0.3, build-machine INT8 0.62/0.38 (FP32 tolerance 0.2 is
    loose because synthetic inputs sit far from the calibration images; INT8 identity tolerance 0.01)."""
    import hashlib

    ref = np.array([[0.7, 0.3]], np.float32)
    q_build = np.array([[0.62, 0.38]], np.float32)
    p = tmp_path / "m.selfcheck.npz"
    np.savez(p, image=np.zeros((1, 8, 8, 3), np.uint8), meta=np.zeros((1, 10), np.float32), probs_reference=ref,
             probs_int8_build=q_build)
    spec = {"file": p.name, "sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "tolerance": 0.2,
            "int8_tolerance": 0.01}
    check = load_self_check(tmp_path, spec)
    same = run_self_check(lambda x, m: (np.array([[0.625, 0.375]], np.float32), None), check)
    assert same.passed
    assert math.isclose(same.max_abs_diff_int8, 0.005, abs_tol=1e-6) and math.isclose(same.max_abs_diff, 0.075,
                                                                                        abs_tol=1e-6)
    assert "build machine's INT8 outputs" in same.summary()
    # 0.66/0.34 is within the FP32 tolerance (0.04 <= 0.2) but 0.04 from the build's INT8: a kernel that differs
    drift = run_self_check(lambda x, m: (np.array([[0.66, 0.34]], np.float32), None), check)
    assert drift.status == "failed"
    assert "validated on" in drift.refusal("m") and "0.040 > 0.010" in drift.refusal("m")
    with pytest.raises(ModelVerificationError, match="int8_tolerance"):
        load_self_check(tmp_path, {k: v for k, v in spec.items() if k != "int8_tolerance"})
