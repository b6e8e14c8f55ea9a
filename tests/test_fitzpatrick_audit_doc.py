"""docs/fitzpatrick17k_audit.md is generated from benchmarks/results/fitzpatrick17k_audit.json (the bundled model's
--audit on Fitzpatrick17k), and the JSON holds both groupings of the same images."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("fitzpatrick_audit_benchmark")


def test_doc_matches_json(bench):
    res = json.loads(bench.RESULTS.read_text(encoding="utf-8"))
    assert bench.DOC.read_text(encoding="utf-8") == bench.render(res), (
        "docs/fitzpatrick17k_audit.md is stale: python benchmarks/fitzpatrick_audit_benchmark.py --render-only")


def test_json_groupings_cover_the_same_images():
    res = json.loads((REPO / "benchmarks" / "results" / "fitzpatrick17k_audit.json").read_text(encoding="utf-8"))
    t, d = res["runs"]["type"], res["runs"]["ddi"]
    assert t["grouping"] == "type" and d["grouping"] == "ddi" and t["n_audited"] == d["n_audited"]
    if res["subset"]["split"] == "gate":  # the card fixes the gate split's Fitzpatrick17k count in advance
        card = json.loads((REPO / "resources" / "models" / f"{t['model_card']['name']}.json").read_text("utf-8"))
        assert res["subset"]["manifest_sha256"] == card["provenance"]["splits"]["sha256"]
        assert t["n_audited"] == res["subset"]["n_rows"] == card["provenance"]["splits"]["counts"]["gate"]["fitz"]
        # the app's --audit and the build's gate score the same images the same way: the card's gate-split AUROC
        # (INT8, build machine) reproduces within the cross-CPU allowance of the bundled-model tests
        fig = card["metrics"]["validation"]["fitz_malignant"]
        assert t["overall"]["n_pos"] == fig["n_pos"]
        assert abs(t["overall"]["auroc"] - fig["auroc"]) <= 0.01
    else:
        assert t["n_audited"] == 2333
    assert t["overall"]["auroc"] == d["overall"]["auroc"]  # same scores; only the grouping differs
    pooled = {"I-II": ("I", "II"), "III-IV": ("III", "IV"), "V-VI": ("V", "VI")}
    for name, members in pooled.items():
        assert d["groups"][name]["n"] == sum(t["groups"][m]["n"] for m in members)
        assert d["groups"][name]["n_pos"] == sum(t["groups"][m]["n_pos"] for m in members)
    for run in (t, d):
        for g in run["groups"].values():
            assert g["n_fst_label"] + g["n_fst_estimated"] == g["n"]
        neo = run["malignant_vs_benign_neoplasm"]
        # every malignant image is a neoplasm: leaving the non-neoplastic ones out keeps all positives
        assert neo["overall"]["n_pos"] == run["overall"]["n_pos"] and neo["overall"]["n"] < run["overall"]["n"]
        if res["subset"]["split"] == "all":
            assert neo["overall"]["n"] == 1519 and neo["overall"]["n_pos"] == 1219  # README: 1,219 malignant, 300 benign
