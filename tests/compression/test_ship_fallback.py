"""The adapted track's fallback: a complete gate run that missed limits may ship the INT8 adapted teacher when the
config says so, with every missed limit in words; anything else still refuses."""

from __future__ import annotations

from compression.ship_adapted import FALLBACK_NOTE, limitations, missed_checks, ships_despite


def _gate() -> dict:
    checks = [
        {"kind": "limit", "name": "size MB", "value": 21.68, "op": "<", "bound": 30.0, "met": True},
        {"kind": "limit", "name": "INT8-vs-FP32 top-1 agreement", "value": 0.918, "op": ">=", "bound": 0.97,
         "met": False},
        {"kind": "limit", "name": "latency p50 ratio to the FP32 teacher", "value": None, "op": "<=", "bound": 0.5,
         "met": False},
        {"kind": "target", "name": "ISIC >= 0.90", "value": 0.87, "op": ">=", "bound": 0.9, "met": False},
    ]
    groups = {"I-II": {"auroc": 0.8, "n": 300}, "III-IV": {"auroc": 0.8, "n": 300}, "V-VI": {"auroc": 0.7, "n": 90}}
    metrics = {"isic_mel_vs_nv": {"auroc": 0.873}, "pad_fst_labelled": {"auroc": 0.838},
               "fitz_malignant": {"auroc": 0.817, "groups": groups}}
    return {"checks": checks, "candidate": {"metrics": metrics}, "cpu_summary": "x86_64 AVX2 no VNNI"}


def test_missed_checks_name_value_and_limit_and_skip_met_limits_and_targets():
    assert missed_checks(_gate()) == ["INT8-vs-FP32 top-1 agreement: 0.918 (limit >=0.970)",
                                      "latency p50 ratio to the FP32 teacher: None (limit <=0.500)"]


def test_the_card_limitations_open_with_the_failed_gate():
    lines = limitations(_gate())
    assert lines[0].startswith("This model did NOT pass its release gate: it missed 2 limit(s): INT8-vs-FP32 top-1")
    assert lines[0].endswith(FALLBACK_NOTE)
    passed = _gate()
    passed["checks"] = passed["checks"][:1]
    assert not any("NOT pass" in line for line in limitations(passed))


def test_only_missed_limits_of_a_complete_gate_ship_and_only_when_configured():
    missed = ["the gate did not pass", "a gate check was missed"]
    assert ships_despite(missed, "ship_teacher_int8")
    assert not ships_despite(missed, "refuse")
    assert not ships_despite([], "ship_teacher_int8")  # a passed gate ships the normal way, not as a fallback
    for other in ("the gate ran on another split manifest", "the gate result is for another model file",
                  "the gate result lacks checks ['size MB']", "the gate ran with max_size_mb = 40, looser than the "
                  "config's 30.0"):
        assert not ships_despite([*missed, other], "ship_teacher_int8"), other
