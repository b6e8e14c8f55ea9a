"""docs/api.md's performance section is generated from benchmarks/results/api.json, never typed by hand."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("api_benchmark", REPO / "benchmarks" / "api_benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _level(users, rps, p50, p95, p99, fails=0, n=1000):
    return {"users": users, "requests": n, "failures": fails, "error_rate": fails / n, "throughput_rps": rps,
            "p50_ms": p50, "p95_ms": p95, "p99_ms": p99, "mean_batch": 1.5}


def test_verdicts_against_the_targets(bench, tmp_path):
    res = {"meta": {"date": "2026-01-01 00:00 UTC", "cpu_count": 2, "cpu_features": ["avx2"], "platform": "Linux",
                    "python": "3.11", "onnxruntime": "1.0", "model": "m", "model_sha256": "ab" * 32, "images": 64,
                    "image_mix": "mix", "seconds": 20, "window_ms": 10, "load_before": [1, 1, 1],
                    "load_after": [2, 2, 2]},
           "levels": {"on": [_level(1, 25.0, 40, 60, 90), _level(50, 30.0, 1600, 2000, 2500, fails=10)],
                      "off": [_level(1, 24.0, 41, 62, 95), _level(50, 20.0, 2400, 3000, 3500)]},
           "stress": {"requests": 10000, "users": 10, "failures": 0, "throughput_rps": 28.0, "p50_ms": 300,
                      "p95_ms": 450, "p99_ms": 600, "rss_samples": 700, "rss_start_mb": 250.0, "rss_end_mb": 252.0,
                      "rss_growth_mb": 2.0, "rss_max_mb": 260.0}}
    for lv in res["levels"]["on"] + res["levels"]["off"]:
        lv["targets_met"] = bench.met(lv)
    table = bench.render_table(res)
    assert "| on (10 ms) | 1 | 25.0 | 40 | 60 | 90 | 0 (0.0%) | 1.50 | all met |" in table
    assert "| on (10 ms) | 50 | 30.0 | 1600 | 2000 | 2500 | 10 (1.0%) | 1.50 | missed: p50, p95, p99 |" in table
    assert "| 50 | 1.50x | 0.67x | 0.67x |" in table
    assert "10,000 requests with 10 users" in table and "(+2.0 MB)" in table
    assert "shared with other engineers" in table
    doc = tmp_path / "api.md"
    doc.write_text(f"intro\n{bench.BEGIN}\nold\n{bench.END}\nafter\n")
    bench.update_doc(res, doc)
    text = doc.read_text()
    assert text.startswith("intro\n") and text.endswith("\nafter\n") and "old" not in text and table in text


def test_doc_matches_the_benchmark_json(bench):
    path = REPO / "benchmarks" / "results" / "api.json"
    assert path.is_file(), "run python benchmarks/api_benchmark.py to produce benchmarks/results/api.json"
    res = json.loads(path.read_text())
    doc = (REPO / "docs" / "api.md").read_text(encoding="utf-8")
    assert bench.render_table(res) in doc, "docs/api.md is stale: python benchmarks/api_benchmark.py --render"
    assert res["meta"]["shared_machine"] is True
    assert {lv["users"] for lv in res["levels"]["on"]} == {1, 5, 10, 20, 50}
    assert res["stress"]["requests"] >= 10_000


def test_percentiles_from_locusts_histogram(bench):
    hist = {"10": 1, "20": 1, "30": 1, "40": 1}
    assert bench.percentile(hist, 0.50) == 20.0 and bench.percentile(hist, 0.95) == 40.0
    assert bench.percentile({"5": 98, "900": 2}, 0.99) == 900.0 and bench.percentile({}, 0.5) is None
