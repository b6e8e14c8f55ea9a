"""Slow end-to-end: `python -m compression build` (every stage) on a small real subset with a tiny teacher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from compression.prune import load_student

pytestmark = pytest.mark.slow


def _run(repo, args, env):
    return subprocess.run([sys.executable, "-m", "compression", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_build_stages_on_subset(repo_root, shared_data, tmp_path) -> None:
    env = dict(os.environ, MENDICANT_SHARED_DATA=str(shared_data))
    common = [
        "--name", "e2e", "--set", f'run.runs_dir="{tmp_path}"', "--set", 'model.teacher="tiny"',
        "--set", "data.max_images=40", "--set", "train.epochs=1", "--set", "train.batch_size=8",
        "--set", 'train.freeze_through="middle.0"', "--set", "prune.bn_recalibration_images=16",
        "--set", "prune.batch_size=4", "--set", "prune.batches_per_group=1", "--set", "prune.steps=2",
        "--set", "fairness.min_group_n=3", "--set", "run.threads=1",
        "--set", "adapt.enabled=false",  # the student track (the committed config builds the adapted teacher)
    ]  # fmt: skip
    t0 = time.time()
    proc = _run(repo_root, ["build", "--stages", "data,prune,train", *common], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "e2e"
    for rel in (
        "manifests/train.csv",
        "manifests/val.csv",
        "data/summary.json",
        "prune/pruned.pt",
        "prune/report.json",
        "train/student.pt",
        "train/metrics.json",
        "train/train.log",
        "train/DONE",
    ):
        assert (run / rel).is_file(), rel
    header = (run / "manifests" / "val.csv").read_text().splitlines()[0].split(",")
    assert "sha256" in header and "patient_id" in header and "fst_source" in header
    val = (run / "manifests" / "val.csv").read_text()
    assert "ham10000" not in val
    report = json.loads((run / "prune" / "report.json").read_text())
    assert report["macs_after"] < report["macs_before"]
    model = load_student(run / "train" / "student.pt")
    assert model.head.img_fc.in_features == model.backbone.out_channels
    # resumable: a second build skips every stage
    proc2 = _run(repo_root, ["build", "--stages", "data,prune,train", *common], env)
    assert proc2.returncode == 0 and proc2.stdout.count("skipped") == 3, proc2.stdout
    # a changed config never reuses (or overwrites) outputs made with another one
    proc_cfg = _run(repo_root, ["train", *common, "--set", "train.epochs=2"], env)
    assert proc_cfg.returncode == 2 and "train.epochs: 1 -> 2" in proc_cfg.stderr, proc_cfg.stderr
    assert (run / "train" / "config.json").is_file()
    # the whole build: export (checked against torch), quantize, validate, report; the gate is tightened to a size
    # limit the student cannot meet (0.1 MB), so it fails whatever the AUROCs on 8 validation images happen to be
    # (a random student against a random teacher on 2 ISIC images passes or fails by chance), ship refuses, build
    # exits 1 and the models folder is untouched
    models = tmp_path / "models"
    models.mkdir()
    (models / "keep.json").write_text("{}")
    proc4 = _run(repo_root, ["build", *common, "--set", f'ship.models_dir="{models}"', "--set", "gate.max_size_mb=0.1"],
                 env)
    out = proc4.stdout + proc4.stderr
    assert proc4.returncode == 1, out[-3000:]
    export = json.loads((run / "export" / "export.json").read_text())
    assert export["passed"] and export["opset"] >= 17 and not export["batch_norm_left"] and export["seconds"] > 0
    quant = json.loads((run / "quantize" / "quantize.json").read_text())
    assert {"int8", "int8_plain", "fp16", "int8_dynamic"} <= set(quant["variants"])
    gate = json.loads((run / "validate" / "validate.json").read_text())
    assert gate["gate_passed"] is False and gate["data"]["ham10000"] == 0
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["status"].startswith("gate FAILED")
    assert "gate" in out and "refus" in out.lower()
    assert sorted(p.name for p in models.iterdir()) == ["keep.json"]
    assert time.time() - t0 < 200
