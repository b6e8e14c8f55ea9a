"""docs/skin_tone.md is generated from benchmarks/results/skin_tone.json, and the JSON is self-consistent."""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.support.benchmarks import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("skin_tone_benchmark")


@pytest.fixture(scope="module")
def res():
    return json.loads((REPO / "benchmarks" / "results" / "skin_tone.json").read_text(encoding="utf-8"))


def test_doc_matches_json(bench, res):
    doc = (REPO / "docs" / "skin_tone.md").read_text(encoding="utf-8")
    assert doc == bench.render(res), "docs/skin_tone.md is stale: python benchmarks/skin_tone_benchmark.py --render-only"
    assert (REPO / "docs" / "skin_tone" / "confusion.png").is_file()


def test_json_is_consistent(res):
    m = res["metrics"]
    counts = res["confusion"]["counts"]
    assert sum(map(sum, counts)) == m["n_labelled"]
    assert sum(row[-1] for row in counts) == m["n_unknown"] == sum(m["unknown_reasons"].values())
    assert m["n"] + m["n_unknown"] == m["n_labelled"]
    exact = sum(counts[i][i] for i in range(6))
    within = sum(counts[i][j] for i in range(6) for j in range(6) if abs(i - j) <= 1)
    assert exact / m["n"] == pytest.approx(m["exact"]) and within / m["n"] == pytest.approx(m["within_one"])
    dark_light = sum(counts[i][j] for i in (4, 5) for j in (0, 1))
    assert dark_light / sum(sum(counts[i][:6]) for i in (4, 5)) == pytest.approx(m["dark_as_light"])
    for t in res["targets"]:
        v = t["value"]
        assert t["met"] == (v >= t["limit"] if t["op"] == ">=" else v <= t["limit"])
    assert res["pad_masked_crops"]["unknown_share"] >= 0.99


def test_spearman_matches_scipy(bench):
    stats = pytest.importorskip("scipy.stats")
    import numpy as np

    rng = np.random.default_rng(1)
    a, b = rng.integers(1, 7, 200), rng.integers(1, 7, 200)
    assert bench.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).correlation)
