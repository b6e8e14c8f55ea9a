"""The audit as text: DDI group names, label-vs-estimated counts, the malignant-vs-benign-neoplasm sentence."""

from __future__ import annotations

import numpy as np

from mendicant_desktop.app import audit_text
from mendicant_desktop.app.audit_run import AuditRun, neoplasm_audit
from mendicant_desktop.core import audit as core_audit


def _run() -> AuditRun:
    rng = np.random.default_rng(2)
    n = 120
    groups = ["II"] * 60 + ["V"] * 40 + ["VI"] * 20
    parts = (["malignant", "benign", "non-neoplastic"] * 40)
    labels = [1 if p == "malignant" else 0 for p in parts]
    scores = np.clip(np.array(labels) * 0.3 + rng.uniform(0, 0.7, n), 0, 1).tolist()
    src = ["label"] * 100 + ["estimated"] * 20
    run = AuditRun(images=[f"{i}.jpg" for i in range(n)], scores=scores, labels=labels, groups=groups,
                   fst_source=src, partitions=parts, grouping="ddi", n_boot=50, threshold=0.5)
    run.result = core_audit.audit(scores, labels, groups, 0.5, n_boot=50, fst_source=src, grouping="ddi")
    run.neoplasm_result = neoplasm_audit(run)
    return run


def test_ddi_names_and_source_counts():
    run = _run()
    rows = {cells[0]: cells for cells, _ in audit_text.table_rows(run.result)}
    assert set(rows) == {"All", "FST I–II", "FST V–VI"}
    assert rows["FST V–VI"][7] == "mixed: 40 label + 20 est." and rows["FST I–II"][7] == "label"
    assert "over FST I–II, FST V–VI" in audit_text.gap_text(run.result)


def test_neoplasm_sentence_and_csv_block():
    run = _run()
    nr = run.neoplasm_result
    assert nr.overall.n == 80 and nr.overall.n_pos == 40  # non-neoplastic third left out
    text = audit_text.neoplasm_text(run)
    assert text.startswith("Malignant vs benign neoplasms (non-neoplastic conditions left out; 40 vs 40): AUROC ")
    assert "FST I–II" in text and "FST V–VI" in text
    csv_text = audit_text.to_csv(run)
    assert "comparison,malignant vs benign neoplasms (non-neoplastic left out)" in csv_text
    assert csv_text.splitlines()[0].endswith("n_fst_label,n_fst_estimated")


def test_no_category_no_neoplasm_sentence():
    run = _run()
    run.partitions = [""] * len(run.scores)
    assert neoplasm_audit(run) is None and audit_text.neoplasm_text(run) == ""
