"""docs/compression_results.md is generated from benchmarks/results/compression_adapted.json and matches it."""

from __future__ import annotations

import json

from tests.support.benchmarks import load_benchmark


def _bench():
    return load_benchmark("adapted_benchmark")


def test_the_results_doc_is_the_rendering_of_its_json() -> None:
    bench = _bench()
    res = json.loads(bench.RESULTS.read_text(encoding="utf-8"))
    assert bench.DOC.read_text(encoding="utf-8") == bench.render(res, res.get("gate")), (
        "docs/compression_results.md differs from benchmarks/results/compression_adapted.json: "
        "run `python benchmarks/adapted_benchmark.py --render-only`")


def test_the_results_name_the_cpu_and_every_student_rung() -> None:
    bench = _bench()
    res = json.loads(bench.RESULTS.read_text(encoding="utf-8"))
    assert {"AVX2", "VNNI"} <= set(res["cpu"]) and res["cpu_summary"]
    assert set(res["students"]) == set(bench.STUDENT_RUNGS)
    assert {"teacher FP32", "teacher INT8"} <= set(res["rows"])
    doc = bench.DOC.read_text(encoding="utf-8")
    assert res["cpu_summary"] in doc and "not built" in doc


def _variants():
    return load_benchmark("int8_variants")


def test_the_int8_variants_doc_is_the_rendering_of_its_json() -> None:
    bench = _variants()
    res = json.loads(bench.RESULTS.read_text(encoding="utf-8"))
    assert bench.DOC.read_text(encoding="utf-8") == bench.render(res), (
        "docs/int8_variants.md differs from benchmarks/results/int8_variants.json: "
        "run `python benchmarks/int8_variants.py --render-only`")
    assert res["split"] == "select" and res["cpu"] and set(res["variants"]) <= set(bench.VARIANTS)
