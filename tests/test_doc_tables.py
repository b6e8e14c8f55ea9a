"""Published figures come from code: every generated table in the docs equals its rendering from the JSON.

The tables sit between ``<!-- BEGIN GENERATED <file>.json <table> ... -->`` and ``<!-- END GENERATED -->`` in
``docs/batch.md``, ``docs/gui.md``, ``docs/production_deployment_guide.md`` and ``docs/model_card.md``; the
JSON files are under ``benchmarks/results/`` (written by the benchmarks), ``model_card.json`` being the bundled
model's card. On a failure: re-run the benchmark if the figures should change, then
``python benchmarks/doc_tables.py``, and commit the JSON and the docs together.
"""

from __future__ import annotations

import json

import pytest

from tests.conftest import REPO
from tests.support.benchmarks import load_benchmark

DT = load_benchmark("doc_tables")


@pytest.mark.parametrize("doc", DT.DOCS)
def test_generated_tables_match_their_json(doc):
    path = REPO / doc
    blocks = list(DT.BLOCK.finditer(path.read_text(encoding="utf-8")))
    assert blocks, f"{doc} has no generated table"
    stale = DT.stale_blocks(path)
    assert stale == [], (f"{doc}: {', '.join(stale)} differ from the JSON; run `python benchmarks/doc_tables.py` "
                         "(after re-running the benchmark if the figures should change)")


def test_every_table_has_its_json_and_a_renderer():
    used = {(m["json"], m["table"]) for doc in DT.DOCS for m in DT.BLOCK.finditer((REPO / doc).read_text("utf-8"))}
    assert used <= set(DT.TABLES), used - set(DT.TABLES)
    for name in {j for j, _ in used} - {DT.MODEL_CARD}:
        assert (DT.RESULTS / name).is_file(), f"benchmarks/results/{name} is missing"


def test_a_changed_figure_changes_the_table(tmp_path):
    """The renderers read the JSON (a figure typed into a template would not move)."""
    for name in sorted({j for j, _ in DT.TABLES} - {DT.MODEL_CARD}):  # every results file a table reads
        data = DT.load(name)
        (tmp_path / name).write_text(json.dumps(data), encoding="utf-8")
    before = {k: DT.render(j, t, tmp_path) for (j, t) in DT.TABLES if j != DT.MODEL_CARD for k in [(j, t)]}
    batch = DT.load("batch_benchmark.json")
    batch["runs"][0]["images_per_s"] = 12345.6
    batch["stage_cpu_ms_per_image"]["inference"] += 1.0
    (tmp_path / "batch_benchmark.json").write_text(json.dumps(batch), encoding="utf-8")
    gui = DT.load("gui_benchmark.json")
    gui["drop_to_result_ms"]["median"] = 9876.0
    (tmp_path / "gui_benchmark.json").write_text(json.dumps(gui), encoding="utf-8")
    size = DT.load("bundle_size.json")
    size["unpacked_bytes"] += 7_000_000
    (tmp_path / "bundle_size.json").write_text(json.dumps(size), encoding="utf-8")
    dom = DT.load("domain_check.json")
    dom["entry"]["gate"]["fitzpatrick17k"]["auroc"] = 0.1234
    dom["baseline_distance"]["select_auroc_by_k"]["8"] = 0.9876
    (tmp_path / "domain_check.json").write_text(json.dumps(dom), encoding="utf-8")
    after = {k: DT.render(*k, tmp_path) for k in before}
    assert "12,345.6" in after[("batch_benchmark.json", "throughput")] or "12345.6" in after[
        ("batch_benchmark.json", "throughput")]
    assert after[("batch_benchmark.json", "stages")] != before[("batch_benchmark.json", "stages")]
    assert "9876 ms" in after[("gui_benchmark.json", "performance")]
    assert after[("bundle_size.json", "budgets")] != before[("bundle_size.json", "budgets")]
    assert "0.123 (" in after[("domain_check.json", "gate")]
    assert "| 0.988 |" in after[("domain_check.json", "selection")]
