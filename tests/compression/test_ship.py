"""compression.ship: refuses without a passed, current gate (nothing touched); ships a tiny gated student.

Fast: the refusal tests use fake files; the positive path exports two tiny random ReferenceNets (teacher and
student), quantizes the student on a few synthetic images and ships it into a temporary models folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from compression.config import load_config
from mendicant_desktop.core.errors import ConfigError

ship_mod = pytest.importorskip("compression.ship")

GATE_LIMITS = {"max_size_mb": 30.0, "max_latency_ratio": 0.5, "max_auroc_drop": 0.02, "max_gap_increase": 0.005}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def _old_bundle(models: Path, name: str = "old-model") -> list[str]:
    models.mkdir(parents=True, exist_ok=True)
    files = [f"{name}.onnx", f"{name}.head.npz", f"{name}.calibration.csv"]
    for f in files:
        (models / f).write_bytes(b"old " + f.encode())
    card = {"name": name, "file": files[0], "head": {"file": files[1]},
            "provenance": {"calibration": {"manifest_file": files[2]}}}  # fmt: skip
    (models / f"{name}.json").write_text(json.dumps(card), encoding="utf-8")
    (models / "README.txt").write_text("not a model file\n", encoding="utf-8")
    return [*files, f"{name}.json"]


def _gate(student: Path, *, passed: bool = True, sha: str | None = None, **extra) -> dict:
    checks = [{"kind": "limit", "name": "size (MB)", "value": 1.0, "op": "<", "bound": 30.0, "met": True},
              {"kind": "limit", "name": "ISIC external mel-vs-nv AUROC", "value": 0.70, "op": ">=",
               "bound": 0.75, "met": passed},
              {"kind": "target", "name": "size (MB)", "value": 1.0, "op": "<=", "bound": 15.0, "met": True}]  # fmt: skip
    res = {"model": str(student), "sha256": sha or hashlib.sha256(student.read_bytes()).hexdigest(),
           "gate_passed": passed, "checks": checks, "gate_limits": dict(GATE_LIMITS)}  # fmt: skip
    res.update(extra)
    return res


@pytest.fixture
def fake_run(tmp_path):
    run = tmp_path / "runs" / "r"
    (run / "quantize").mkdir(parents=True)
    student = run / "quantize" / "student_int8.onnx"
    student.write_bytes(b"not really an onnx file")
    (run / "quantize" / "student_int8.head.npz").write_bytes(b"head")
    models = tmp_path / "models"
    _old_bundle(models)
    cfg = load_config(overrides={"run.runs_dir": str(tmp_path / "runs"), "run.name": "r",
                                 "ship.models_dir": str(models)})  # fmt: skip
    return cfg, run, student, models


def _write_gate(run: Path, res: dict) -> None:
    (run / "validate").mkdir(exist_ok=True)
    (run / "validate" / "validate.json").write_text(json.dumps(res), encoding="utf-8")


def _refused(cfg, run, models):
    before = _snapshot(models)
    lines: list[str] = []
    with pytest.raises(SystemExit) as exc:
        ship_mod.run_stage(cfg, run, log=lines.append, argv=[])
    assert exc.value.code == 1
    assert _snapshot(models) == before, "the models folder was touched"
    assert not list(models.glob(".*")), "a staging folder was left behind"
    assert len(lines) == 1 and lines[0].startswith("ship: REFUSED: ")
    return lines[0]


def test_refuses_without_a_gate_result(fake_run):
    cfg, run, _, models = fake_run
    msg = _refused(cfg, run, models)
    assert "no gate result" in msg and "validate.json" in msg


def test_refuses_a_failed_gate(fake_run):
    cfg, run, student, models = fake_run
    _write_gate(run, _gate(student, passed=False))
    msg = _refused(cfg, run, models)
    assert "gate FAILED" in msg and "ISIC external mel-vs-nv AUROC" in msg


def test_refuses_a_gate_result_for_another_model(fake_run):
    cfg, run, student, models = fake_run
    _write_gate(run, _gate(student, sha="0" * 64, model="resources/models/other.onnx"))
    msg = _refused(cfg, run, models)
    assert "for another model" in msg and "other.onnx" in msg
    # the student changed after the gate ran: the same refusal
    _write_gate(run, _gate(student))
    student.write_bytes(b"retrained since")
    assert "for another model" in _refused(cfg, run, models)


def test_refuses_inconsistent_or_loosened_gate_results(fake_run):
    cfg, run, student, models = fake_run
    res = _gate(student)
    res["checks"][1]["met"] = False  # says passed, but a limit was missed
    _write_gate(run, res)
    assert "gate FAILED" in _refused(cfg, run, models)
    _write_gate(run, _gate(student, gate_limits={**GATE_LIMITS, "max_auroc_drop": 0.5}))
    assert "looser than the config" in _refused(cfg, run, models)


def test_ship_config_section_is_validated():
    cfg = load_config()
    assert (cfg.ship.name, cfg.ship.version, cfg.ship.models_dir) == ("mendicant-xception-adapted-int8", "0.3.0", "")
    assert ship_mod.resolve_models_dir(cfg).parts[-2:] == ("resources", "models")
    with pytest.raises(ConfigError, match=r"ship\.name must be"):
        load_config(overrides={"ship.name": 3})
    with pytest.raises(ConfigError, match=r"ship\.name must be"):
        load_config(overrides={"ship.name": "../evil"})
    with pytest.raises(ConfigError, match=r"ship\.version must be"):
        load_config(overrides={"ship.version": "1.0"})
    with pytest.raises(ConfigError, match=r"ship\.models_dir must be a string"):
        load_config(overrides={"ship.models_dir": 1})
    with pytest.raises(ConfigError, match="unknown key ship.nme"):
        load_config(overrides={"ship.nme": "x"})


# --------------------------------------------------------------------------------------------------
# Positive path on a tiny gated student
# --------------------------------------------------------------------------------------------------


def _records():
    from compression.data import Record

    recs = []
    for i in range(40):  # ISIC external MEL/NV, 24 train + 16 val
        dx = "MEL" if i % 2 else "NV"
        recs.append(Record(dataset="isic", pool="external", image=f"i{i}.jpg", relpath=f"isic/i{i}.jpg", dx=dx,
                           dx7=dx.lower(), label=4 if dx == "MEL" else 5, malignant=int(dx == "MEL"),
                           split="train" if i < 24 else "val", sha256=f"isic{i:04d}"))  # fmt: skip
    for j in range(48):  # PAD, FST I-IV, 28 train + 20 val
        mal = int(j % 3 == 0)
        recs.append(Record(dataset="pad", pool="pad", image=f"p{j}.png", relpath=f"pad/p{j}.png",
                           dx="BCC" if mal else "NEV", dx7="bcc" if mal else "nv", label=1 if mal else 5,
                           malignant=mal, patient_id=f"P{j}", fst=("I", "II", "III", "IV")[j % 4],
                           fst_source="label", split="train" if j < 28 else "val", sha256=f"pad{j:04d}"))  # fmt: skip
    return recs


def test_ships_a_gated_tiny_student(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from compression.data import DataIndex
    from compression.export import export_onnx
    from compression.quantize import calibration_positions, quantize_int8_static
    from mendicant_desktop.core.bundle import ModelBundle
    from tests.compression._tiny import spread_tiny_model

    torch.set_num_threads(min(2, torch.get_num_threads()))
    monkeypatch.setenv("MENDICANT_CACHE", str(tmp_path / "cache"))
    runs, models, shared = tmp_path / "runs", tmp_path / "models", tmp_path / "shared"
    run = runs / "r"
    cfg = load_config(overrides={"run.runs_dir": str(runs), "run.name": "r", "ship.models_dir": str(models),
                                 "data.shared_data": str(shared)})  # fmt: skip

    # the run's data index (on disk, as the data stage writes it)
    recs = _records()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (len(recs), 254, 254, 3)).astype(np.float32)
    meta = np.zeros((len(recs), 10), np.float32)
    meta[:, 2], meta[:, 7], meta[:, 9] = 1, 1, 1
    (run / "data").mkdir(parents=True)
    np.save(run / "data" / "images.npy", images)
    np.save(run / "data" / "meta.npy", meta)
    (run / "data" / "records.json").write_text(json.dumps([dataclasses.asdict(r) for r in recs]), encoding="utf-8")
    (run / "data" / "DONE").write_text("ok\n")
    index = DataIndex(run_dir=run, records=recs, images=images, meta=meta)
    (shared / "isic").mkdir(parents=True)
    Image.fromarray(images[0].astype(np.uint8)).save(shared / "isic" / "i0.jpg")

    # teacher, student (INT8 static, FST-balanced calibration manifest), pruning/training summaries, gate
    teacher = export_onnx(spread_tiny_model(0), tmp_path / "teacher" / "reference_fp32.onnx")
    qdir = run / "quantize"
    fp32 = export_onnx(spread_tiny_model(1), qdir / "student_fp32.onnx")
    pos, man = calibration_positions(cfg, index, per_group=2)
    student = quantize_int8_static(fp32, qdir / "student_int8.onnx", images, meta, pos, batch_size=2, stride=2)
    (qdir / "quantize.json").write_text(json.dumps({"calibration": man, "shipped": student.name}))
    (run / "prune").mkdir()
    (run / "prune" / "report.json").write_text(json.dumps({"mac_ratio": 0.5, "macs_before": 10, "macs_after": 5,
                                                           "params_before": 8, "params_after": 4,
                                                           "steps": [{}, {}]}))  # fmt: skip
    (run / "train").mkdir()
    (run / "train" / "metrics.json").write_text(json.dumps({"best_epoch": 3, "epochs_run": 5, "stop_reason": "epochs",
                                                            "freeze_through": "middle.7", "wall_seconds": 12.0}))  # fmt: skip
    t_sha = hashlib.sha256(teacher.read_bytes()).hexdigest()
    paired = {"n_boot": 1000, "gap_groups": ["II", "III"],
              "isic_external_auroc_diff": {"value": -0.004, "ci95": [-0.095, 0.088], "limit": -0.02, "op": ">=",
                                           "resolved": None},
              "auroc_gap_diff": {"value": -0.02, "ci95": [-0.145, 0.142], "limit": 0.005, "op": "<=",
                                 "resolved": None}}  # fmt: skip
    nometa = {"n": 260, "n_pos": 192, "candidate": {"auroc": 0.627, "sensitivity": 0.833},
              "teacher": {"auroc": 0.628}, "candidate_with_metadata": {"auroc": 0.703, "sensitivity": 0.927}}
    _write_gate(run, _gate(student, teacher_sha256=t_sha, teacher_model=str(teacher), paired=paired,
                           pad_fst_labelled_without_metadata=nometa))  # fmt: skip
    old = _old_bundle(models)

    lines: list[str] = []
    card_path = ship_mod.ship(cfg, run, teacher=teacher, n_boot=20, log=lines.append)

    name = cfg.ship.name  # the committed [ship] name
    assert card_path == models / f"{name}.json"
    assert sorted(p.name for p in models.iterdir()) == sorted(
        [f"{name}.onnx", f"{name}.head.npz", f"{name}.calibration.csv", f"{name}.json", "README.txt"])
    assert not any((models / f).exists() for f in old)
    assert any("removed the previously bundled model old-model" in line for line in lines), lines
    bundle = ModelBundle.load(card_path)
    card = json.loads(card_path.read_text())
    assert (bundle.name, card["version"]) == (name, cfg.ship.version)
    assert card["sha256"] == hashlib.sha256(student.read_bytes()).hexdigest()
    comp = card["provenance"]["compression"]
    assert comp["run"] == "r" and comp["pruning"]["mac_ratio"] == 0.5 and comp["pruning"]["steps"] == 2
    assert comp["training"]["best_epoch"] == 3 and comp["gate"]["passed"] is True
    assert [c["name"] for c in comp["gate"]["checks"]][0] == "size (MB)"
    assert len(comp["config"]["effective_sha256"]) == 64
    assert card["provenance"]["code"]["built_by"] == "python -m compression ship"
    assert card["provenance"]["calibration"]["n"] == len(pos)
    csv_rows = (models / f"{name}.calibration.csv").read_text().splitlines()
    assert len(csv_rows) == len(pos) + 1
    assert card["provenance"]["calibration"]["manifest_file_sha256"] == hashlib.sha256(
        (models / f"{name}.calibration.csv").read_bytes()).hexdigest()
    assert 0 < card["threshold"] < 1
    assert "int8" not in card["metrics"]["full_pools_threshold_free"]  # the student trained on those pools
    assert any("pruned" in s and "fine-tuned" in s for s in card["limitations"])
    assert ", 0.70 on the biopsied lesions alone" in card["limitations"][1]
    assert comp["gate"]["paired_vs_teacher"] == paired
    pad = card["metrics"]["validation"]["pad_malignancy"]["overall"]
    assert (f"it reaches sensitivity {pad['sensitivity']:.2f} and specificity {pad['specificity']:.2f}"
            in card["limitations"][4])  # fmt: skip
    assert card["limitations"][-1] == (
        "Enter the patient's age, sex and body site when they are known. On biopsied clinical photos (PAD-UFES-20 "
        "validation, n=260) this model's malignancy AUROC is 0.70 with them and 0.63 without.")
    line = card["limitations"][-2]
    assert line.startswith("Compared with the reference network on the same validation images")
    assert "-0.004 (paired bootstrap 95% CI -0.095 to +0.088, so the validation split cannot tell" in line
