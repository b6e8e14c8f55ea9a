"""docs/api.md's load table: rendered by benchmarks/doc_tables.py from benchmarks/results/api.json.

``tests/test_doc_tables.py`` checks that the doc's block equals its rendering; here: the verdicts against the
targets on fixed results, the benchmark's percentile arithmetic, and that the committed JSON covers what the
issue asks for.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.support.benchmarks import load_benchmark


def _load(name: str):
    return load_benchmark(name)


@pytest.fixture(scope="module")
def bench():
    return _load("api_benchmark")


@pytest.fixture(scope="module")
def tables():
    return _load("doc_tables")


def _level(users, rps, p50, p95, p99, fails=0, n=1000):
    return {"users": users, "requests": n, "failures": fails, "error_rate": fails / n, "throughput_rps": rps,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_batch": 1.5}


def test_verdicts_against_the_targets(bench, tables):
    res = {"meta": {"date": "2026-01-01 00:00 UTC", "cpu_count": 2, "cpu_features": ["avx2"], "platform": "Linux",
                    "python": "3.11", "onnxruntime": "1.0", "model": "m", "model_sha256": "ab" * 32, "images": 64,
                    "image_mix": "mix", "seconds": 20, "window_ms": 10, "load_before": [1, 1, 1],
                    "load_after": [2, 2, 2], "targets": bench.TARGETS},
           "levels": {"on": [_level(1, 25.0, 40, 60, 90), _level(50, 30.0, 1600, 2000, 2500, fails=10)],
                      "off": [_level(1, 24.0, 41, 62, 95), _level(50, 20.0, 2400, 3000, 3500)]},
           "stress": {"requests": 10000, "users": 10, "failures": 0, "throughput_rps": 28.0, "p50_ms": 300,
                      "p95_ms": 450, "p99_ms": 600, "rss_samples": 700, "rss_start_mb": 250.0, "rss_end_mb": 252.0,
                      "rss_growth_mb": 2.0, "rss_max_mb": 260.0}}
    for lv in res["levels"]["on"] + res["levels"]["off"]:
        lv["targets_met"] = bench.met(lv)
    table = tables.TABLES[("api.json", "load")](res)
    assert "(> 10 req/s, p50 < 100, p95 < 200, p99 < 500 ms)" in table
    assert "| on (10 ms) | 1 | 25.0 | 40 | 60 | 90 | 0 (0.0%) | 1.50 | all met |" in table
    assert "| on (10 ms) | 50 | 30.0 | 1600 | 2000 | 2500 | 10 (1.0%) | 1.50 | missed: p50, p95, p99 |" in table
    assert "| off | 50 | 20.0 | 2400 | 3000 | 3500 | 0 (0.0%) | 1.50 | missed: p50, p95, p99 |" in table
    assert "| 50 | 1.50x | 0.67x | 0.67x |" in table
    assert "10,000 requests with 10 users" in table and "(+2.0 MB)" in table
    assert "shared with other engineers" in table
    assert "every target was met at 1 user(s); the throughput target at 1, 50 users" in table
    assert "ranged 1.04x–1.50x across the levels: batching raised throughput at every level." in table


def test_percentiles_from_locusts_histogram(bench):
    hist = {"10": 1, "20": 1, "30": 1, "40": 1}
    assert bench.percentile(hist, 0.50) == 20.0 and bench.percentile(hist, 0.95) == 40.0
    assert bench.percentile({"5": 98, "900": 2}, 0.99) == 900.0 and bench.percentile({}, 0.5) is None


def test_the_committed_run_covers_the_issue(tables):
    res = json.loads((REPO / "benchmarks" / "results" / "api.json").read_text())
    assert res["meta"]["shared_machine"] is True
    assert [lv["users"] for lv in res["levels"]["on"]] == [1, 5, 10, 20, 50]
    assert [lv["users"] for lv in res["levels"]["off"]] == [1, 5, 10, 20, 50]
    assert res["stress"]["requests"] >= 10_000
    assert "docs/api.md" in tables.DOCS
