"""``--audit`` on Fitzpatrick17k's own labels.csv (condition, three_partition, malignant, fst, ...): the generic
reader takes its columns, DDI-style grouping, label vs estimated skin types, malignant vs benign neoplasms."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from mendicant_desktop.app.tables import read_labels
from tests.cli.test_audit_cli import cli_env
from tests.conftest import REPO, SHARED_DATA
from tests.support.fitzpatrick import f17_subset

F17 = SHARED_DATA / "fitzpatrick17k_clinical"


def _rows() -> list[dict[str, str]]:
    if not (F17 / "labels.csv").is_file():
        pytest.skip(f"Fitzpatrick17k data not found at {F17} (../shared/data beside the repo)")
    with open(F17 / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_reader_takes_fitzpatrick17k_labels_as_published():
    """The counts of the data README, read through the generic column names (no per-dataset case)."""
    _rows()
    labels = read_labels(F17 / "labels.csv", F17 / "images")
    assert len(labels.rows) == 2333 and not labels.skipped and labels.has_partition
    assert not labels.has_meta_columns  # width/height/condition are not patient metadata
    assert Counter(r.partition for r in labels.rows) == {"malignant": 1219, "benign": 300, "non-neoplastic": 814}
    assert sum(r.malignant for r in labels.rows) == 1219
    fst = Counter(r.fst for r in labels.rows)
    assert fst == {"I": 438, "II": 772, "III": 457, "IV": 330, "V": 174, "VI": 79, "unknown": 83}


@pytest.fixture(scope="module")
def f17_run(tmp_path_factory, tiny_bundle):
    rows = _rows()
    root = tmp_path_factory.mktemp("f17")
    images = root / "images"
    images.mkdir()
    labels = root / "labels.csv"
    pick = f17_subset(rows, labels, ("1", "2", "5", "6", ""), 6)
    for r in pick:
        os.symlink(F17 / "images" / r["image"], images / r["image"])
    out, js = root / "report.html", root / "metrics.json"
    cmd = [sys.executable, "-m", "mendicant_desktop", "--audit", str(labels), "--images", str(images), "--out",
           str(out), "--json", str(js), "--model", str(tiny_bundle), "--n-boot", "50", "--threads", "2", "--quiet",
           "--no-explain", "--fst-grouping", "ddi"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=240)
    return {"proc": proc, "pick": pick, "html": out, "json": js}


def test_ddi_grouping_partitions_and_fst_provenance(f17_run):
    proc, pick = f17_run["proc"], f17_run["pick"]
    assert proc.returncode == 0, proc.stderr
    d = json.loads(f17_run["json"].read_text(encoding="utf-8"))
    assert d["grouping"] == "ddi"
    assert set(d["groups"]) <= {"I-II", "III-IV", "V-VI", "unknown"}
    labelled = Counter({"1": "I-II", "2": "I-II", "5": "V-VI", "6": "V-VI"}[r["fst"]] for r in pick if r["fst"])
    for name, n in labelled.items():
        g = d["groups"][name]
        assert g["n_fst_label"] == n  # every labelled row is counted as a label in its group ...
        assert g["n_fst_label"] + g["n_fst_estimated"] == g["n"]  # ... and the rest as estimates, said so
        if g["n_fst_estimated"]:
            assert g["fst_source"] == "mixed"
    assert sum(g["n_fst_estimated"] for g in d["groups"].values()) == sum(1 for r in pick if not r["fst"])
    per_image = {r["image"]: r for r in d["images"]}
    assert all(per_image[r["image"]]["fst_source"] == ("label" if r["fst"] else "estimated") for r in pick)
    neo = d["malignant_vs_benign_neoplasm"]
    assert neo["overall"]["n"] == sum(1 for r in pick if r["three_partition"] != "non-neoplastic")
    assert neo["overall"]["n_pos"] == sum(1 for r in pick if r["three_partition"] == "malignant")
    assert d["overall"]["n"] == len(pick) and d["overall"]["n_pos"] == neo["overall"]["n_pos"]
    html = f17_run["html"].read_text(encoding="utf-8")
    assert "Malignant vs benign neoplasms" in html and "malignant vs the rest" in html
    assert "FST V–VI" in html and "DDI-style groups" in html
    assert len(re.findall(r'aria-label="ROC curves per skin type"', html)) == 2  # headline + neoplasm comparison
    assert re.search(r"mixed: \d+ label \+ \d+ estimated", html)
