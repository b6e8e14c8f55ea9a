"""The report stage: a tiny fake run folder with JSON files shaped like a real run's (no models, no scoring)."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from compression import report as R


def _fst(aurocs: dict[str, float | None]) -> dict[str, dict]:
    ns = {"I": (30, 26, False), "II": (159, 124, True), "III": (58, 38, True), "IV": (13, 4, False)}
    out = {
        g: {"n": n, "n_pos": p, "sufficient": s, "auroc": aurocs.get(g, math.nan)}
        for g, (n, p, s) in ns.items()
    }
    out.update({g: {"n": 0, "n_pos": 0, "sufficient": False, "auroc": math.nan} for g in ("V", "VI")})
    return out


def _val(isic: float, pad: float, known: float, gap: float, fst: dict[str, float]) -> dict:
    return {"n": 592, "malignancy_auroc": 0.8, "isic_external_n": 157, "isic_external_auroc": isic, "pad_n": 432,
            "pad_auroc": pad, "pad_known_n": 260, "pad_known_auroc": known, "pad_fst": _fst(fst),
            "pad_fst_gap": gap, "score": 0.7}  # fmt: skip


def _gate_section(isic: float, pad: float, gap: float, g2: float, g3: float, labelled: float | None = None) -> dict:
    def grp(n: int, pos: int, a: float | None, ok: bool) -> dict:
        return {"n": n, "n_pos": pos, "auroc": a, "sufficient": ok}

    # validate.py's key for the biopsied, FST-labelled PAD subset (absent when it was not measured)
    extra = {} if labelled is None else {"pad_malignancy_fst_labelled": grp(260, 192, labelled, True)}
    return {"n": 592, **extra, "isic_external_mel_vs_nv": {"auroc": isic, "n": 157, "n_pos": 91},
            "pad_malignancy": {"overall": {"n": 432, "n_pos": 192, "auroc": pad},
                               "groups": {"I": grp(30, 26, 0.39, False), "II": grp(159, 124, g2, True),
                                          "III": grp(58, 38, g3, True), "IV": grp(13, 4, 0.58, False),
                                          "unknown": grp(172, 0, None, False)},
                               "auroc_gap": gap, "gap_groups": ["II", "III"]},
            "overall_malignancy": {"auroc": 0.84}}  # fmt: skip


def make_run(root: Path, *, passed: bool = False, stale: bool = False) -> Path:
    run = root / "runs" / "fake"
    for d in ("prune", "train", "quantize", "validate", "data"):
        (run / d).mkdir(parents=True)
    (run / "data" / "summary.json").write_text(json.dumps({"seconds": 12.5}))
    layers = {"backbone.entry.2.sepconv1.sep.pointwise": {"in": [256, 256], "out": [728, 415], "out_sparsity": 0.4299,
                                                          "in_sparsity": 0.0, "macs": 102096640}}  # fmt: skip
    (run / "prune" / "report.json").write_text(
        json.dumps(
            {
                "macs_before": 5878449400,
                "macs_after": 2939208057,
                "params_before": 21376679,
                "params_after": 8095999,
                "steps": [
                    {
                        "step": 1,
                        "removed_channels": 1951,
                        "groups_touched": 21,
                        "mac_ratio": 0.875,
                        "params": 17134110,
                        "seconds_total": 295.6,
                    },
                    {
                        "step": 2,
                        "removed_channels": 1719,
                        "groups_touched": 21,
                        "mac_ratio": 0.5,
                        "params": 8095999,
                        "seconds_total": 213.5,
                    },
                ],
                "layers": layers,
                "widths": {},
                "mac_ratio": 0.4999971688112175,
                "param_ratio": 0.3787304379693403,
            }
        )
    )
    hist = [{"epoch": 0, "val": _val(0.5731, 0.6326, 0.5977, 0.0457, {"II": 0.65, "III": 0.61})},
            {"epoch": 1, "train": {"loss": 3.0527}, "seconds": 35.1,
             "val": _val(0.7970, 0.8917, 0.7348, 0.1046, {"II": 0.7138, "III": 0.8184})}]  # fmt: skip
    (run / "train" / "metrics.json").write_text(
        json.dumps(
            {
                "stop_reason": "epochs",
                "epochs_run": 1,
                "best_epoch": 1,
                "best_val": hist[1]["val"],
                "history": hist,
                "wall_seconds": 431.8,
                "freeze_through": "middle.7",
            }
        )
    )  # NaN for FST V/VI, as the real file has
    (run / "teacher_val_metrics.json").write_text(json.dumps(_val(0.7792, 0.5896, 0.6432, 0.0206, {})))
    int8 = run / "quantize" / "student_int8.onnx"
    int8.write_bytes(b"x" * 10_262)
    (run / "quantize" / "student_int8.head.npz").write_bytes(b"h")
    (run / "quantize" / "student_fp16.onnx").write_bytes(b"y" * 17_339)
    (run / "quantize.log").write_text(
        "2026-11-27T07:25:46Z quantize: exported student_fp32.onnx (32.4 MB)\n"
        "2026-11-27T07:26:28Z quantize: int8: 10.3 MB, top-1 agreement with FP32 0.8463, max|dp| 0.5634\n"
        "2026-11-27T07:26:53Z quantize: fp16: 17.3 MB, top-1 agreement with FP32 0.9983, max|dp| 0.0203\n"
    )
    sha = hashlib.sha256(b"stale" if stale else int8.read_bytes()).hexdigest()
    checks = [
        {"kind": "limit", "name": "size (MB)", "value": 0.010262, "op": "<", "bound": 30.0, "met": True, "note": ""},
        {"kind": "limit", "name": "ISIC external mel-vs-nv AUROC", "value": 0.732933732933733, "op": ">=",
         "bound": 0.7592207792207792, "met": passed, "note": "teacher 0.7792 - 0.02"},
        {"kind": "target", "name": "FST I AUROC (n=30)", "value": None, "op": ">=", "bound": 0.85, "met": None,
         "note": "too few to judge"},
    ]  # fmt: skip
    gate = {"model": "runs/fake/quantize/student_int8.onnx", "sha256": sha, "size_mb": 0.010262,
            "teacher_model": "reference_fp32.onnx", "teacher_size_mb": 85.43658, "macs": 2939208057,
            "params": 8077296, "teacher_macs": 5878449400, "teacher_params": 21348247,
            "macs_ratio": 0.4999971688112175,
            "latency": {"teacher": {"p50_ms": 127.7}, "candidate": {"p50_ms": 22.0}, "ratio_p50": 0.17220606758120102},
            "top1_agreement": 0.38, "candidate": _gate_section(0.732933732933733, 0.8942274305555555,
                                                               0.07548508367693418, 0.7126728110599079, 0.7881578947368421,
                                                               labelled=0.7061274509803921),
            "teacher": _gate_section(0.7792207792207793, 0.5896050347222223, 0.020609992723744863, 0.6728, 0.6934),
            "checks": checks, "gate_passed": passed, "targets_met": 0, "targets_total": 1, "seconds": 19.6,
            "paired": {"n_boot": 1000, "gap_groups": ["II", "III"],
                       "isic_external_auroc_diff": {"value": -0.0463, "ci95": [-0.131, 0.041], "limit": -0.02,
                                                    "op": ">=", "resolved": None},
                       "pad_auroc_diff": {"value": 0.3046, "ci95": [0.25, 0.36], "limit": -0.02, "op": ">=",
                                          "resolved": "met"},
                       "auroc_gap_diff": {"value": 0.0549, "ci95": [-0.1, 0.2], "limit": 0.005, "op": "<=",
                                          "resolved": None}}}  # fmt: skip
    (run / "validate" / "student_int8_gate.json").write_text(json.dumps(gate))
    return run


def _models_dir(root: Path) -> tuple[Path, dict[str, bytes]]:
    md = root / "resources" / "models"
    md.mkdir(parents=True)
    (md / "bundled.onnx").write_bytes(b"bundled model")
    return md, {p.name: p.read_bytes() for p in md.iterdir()}


def _row(md: str, label: str) -> list[str]:
    for line in md.splitlines():
        if line.startswith(f"| {label} |"):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no row {label!r}")


def test_report_values_trace_to_the_json(tmp_path: Path) -> None:
    run = make_run(tmp_path)
    docs = tmp_path / "docs" / "compression_results.md"
    rep = R.write_report(run, docs=docs, log=lambda m: None)
    md = (run / "report" / "report.md").read_text()
    assert json.loads((run / "report" / "report.json").read_text())["status"] == rep["status"]

    int8 = _row(md, "pruned student INT8 (static QDQ, shipped candidate)")
    assert int8[1] == f"{10_262 / 1e6:.2f}"  # size from the file itself
    assert int8[2] == f"{8077296 / 1e6:.2f} M" and int8[3] == f"{2939208057 / 1e9:.3f} G"
    assert int8[5] == "0.172" and int8[6] == "0.7329" and int8[7] == "0.8942" and int8[9] == "0.0755"
    assert int8[10] == "0.8463"  # from quantize.log, as quantize.json is missing
    assert int8[11] == "**FAILED**"
    teacher = _row(md, "FP32 teacher (reference)")
    assert (
        teacher[1] == "85.44" and teacher[6] == "0.7792" and teacher[7] == "0.5896" and teacher[9] == "0.0206"
    )
    assert teacher[8] == "0.6432"  # PAD FST-labelled: only in teacher_val_metrics.json

    # the gate's PAD FST-labelled figure is read from validate.py's key (pad_malignancy_fst_labelled)
    assert int8[8] == "0.7061"
    # missing measurements read "not measured"
    fp16 = _row(md, "pruned student FP16")
    assert fp16[5] == R.NM and fp16[6] == R.NM and fp16[7] == R.NM and fp16[10] == "0.9983"
    assert fp16[11] == "not run"
    assert "pruned student FP32 |" not in md  # no file, no row

    assert "| limit | ISIC external mel-vs-nv AUROC | 0.7329 | >= 0.7592 | **MISSED** |" in md
    assert "| target | FST I AUROC (n=30) | not measured | >= 0.8500 | n/a |" in md
    assert "| per-FST AUROC gap | +0.0549 | [-0.100, +0.200] | <= +0.005 | CI straddles the limit (unresolved) |" in md
    assert "| PAD AUROC | +0.3046 | [+0.250, +0.360] | >= -0.020 | CI within the limit |" in md
    assert "withheld (n=30, pos=26)" in md and "0.7127 (n=159)" in md
    assert "| 1 | 3.0527 | 0.7970 | 0.8917 | 0.7348 |" in md  # training curve
    assert "| `backbone.entry.2.sepconv1.sep.pointwise` | 256 → 256 | 728 → 415 | 0.000 | 0.430 |" in md
    assert "| prune | 509 s |" in md and "| train | 432 s |" in md and "| data | 12 s |" in md
    assert "stage did not finish" in md  # quantize.json missing
    text = docs.read_text()
    assert "generated by `python -m compression report`; do not edit" in text
    assert "0.7329" in text and not re.search(r"\bnan\b", text, re.I)


def test_failed_gate_status_and_models_untouched(tmp_path: Path) -> None:
    run = make_run(tmp_path, passed=False)
    md_dir, before = _models_dir(tmp_path)
    rep = R.run_stage(None, run, log=lambda m: None, argv=["--docs", str(tmp_path / "d.md")])
    assert rep["status"].startswith("gate FAILED: ISIC external mel-vs-nv AUROC 0.7329")
    assert "was not replaced" in rep["status"]
    assert {p.name: p.read_bytes() for p in md_dir.iterdir()} == before
    assert f"**Status:** {rep['status']}" in (tmp_path / "d.md").read_text()


def test_passed_gate_status_and_report_never_installs(tmp_path: Path) -> None:
    run = make_run(tmp_path, passed=True)
    md_dir, before = _models_dir(tmp_path)
    rep = R.write_report(run, docs=None, log=lambda m: None)
    assert rep["status"].startswith("gate passed") and "ship stage installs this candidate" in rep["status"]
    assert {p.name: p.read_bytes() for p in md_dir.iterdir()} == before  # only `ship` touches resources/models


def test_stale_gate_result_is_ignored(tmp_path: Path) -> None:
    run = make_run(tmp_path, stale=True)
    rep = R.write_report(run, docs=None, log=lambda m: None)
    md = (run / "report" / "report.md").read_text()
    int8 = _row(md, "pruned student INT8 (static QDQ, shipped candidate)")
    assert int8[6] == R.NM and int8[11] == "not run"
    assert rep["status"].startswith("gate not run") and "not replaced" in rep["status"]
    assert any("sha256 differs" in n for n in rep["notes"])
    teacher = _row(md, "FP32 teacher (reference)")  # falls back to teacher_val_metrics.json
    assert teacher[6] == "0.7792" and teacher[5] == R.NM


def test_empty_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "empty"
    run.mkdir()
    rep = R.write_report(run, docs=tmp_path / "d.md", log=lambda m: None)
    assert rep["status"].startswith("gate not run")
    assert "Training: not measured." in (tmp_path / "d.md").read_text()
