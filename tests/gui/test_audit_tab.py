"""The Audit tab on a small labelled set (real PAD-UFES-20 images when ../shared/data is present)."""

from __future__ import annotations

import csv
import math

import pytest


def _pad_labels(shared_data, tmp_path, per_group: int = 34):
    """A small labels CSV: FST I and II (>= 30 each, both classes), a few III and a few without FST."""
    from tests.conftest import read_labels

    rows = read_labels(shared_data, "pad_ufes20_clinical")
    picked = []
    for fst, n in (("1", per_group), ("2", per_group), ("3", 6)):
        grp = [r for r in rows if r["fst"] == fst]
        pos = [r for r in grp if r["malignant"] == "1"][: n // 2]
        neg = [r for r in grp if r["malignant"] == "0"][: n - len(pos)]
        picked += pos + neg
    picked += [r for r in rows if r["fst"] == ""][:4]
    out = tmp_path / "labels.csv"
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["image", "dx", "fst", "age", "gender", "region"])
        w.writeheader()
        for r in picked:
            w.writerow({k: r[k] for k in w.fieldnames})
        w.writerow({"image": "missing_file.jpg", "dx": "MEL", "fst": "2", "age": "", "gender": "", "region": ""})
        w.writerow({"image": "no_label.jpg", "dx": "???", "fst": "2", "age": "", "gender": "", "region": ""})
    return out, len(picked)


def test_audit_tab_on_small_labelled_set(qtbot, window, shared_data, tmp_path):
    labels, n = _pad_labels(shared_data, tmp_path)
    tab = window.audit
    window.tabs.setCurrentWidget(tab)
    tab.set_inputs(labels, shared_data / "pad_ufes20_clinical" / "images", n_boot=50)
    progress = []
    tab.progress.valueChanged.connect(progress.append)
    results = []
    tab.finished.connect(results.append)
    tab.start()
    assert tab.is_running()
    qtbot.waitUntil(lambda: bool(results), timeout=90_000)
    run = results[0]
    assert run is not None, tab.status.text()
    assert len(run.scores) == n
    assert run.failed == [("missing_file.jpg", run.failed[0][1])]
    assert run.skipped and run.skipped[0][0] == "no_label.jpg"
    res = run.result
    assert set(res.groups) >= {"I", "II", "III"}
    assert res.groups["I"].sufficient and res.groups["II"].sufficient
    assert not res.groups["III"].sufficient
    assert not math.isnan(res.auroc_gap)
    # estimated skin types for rows without a label: masked PAD crops give 'unknown'
    assert "estimated" in run.fst_source
    # the table: overall first, insufficient rows withhold numbers
    t = tab.table
    assert t.rowCount() == 1 + len(res.groups)
    texts = {t.item(r, 0).text(): r for r in range(t.rowCount())}
    r3 = texts["FST III"]
    assert "withheld" in t.item(r3, 3).text()
    assert t.item(texts["FST I"], 3).text()[:1].isdigit()
    assert "AUROC gap" in tab.gap.text()
    assert progress
    html = tab.export_html(tmp_path / "audit.html").read_text(encoding="utf-8")
    # the --audit report: ROC and calibration drawn as inline SVG
    assert "<svg" in html and "missing_file.jpg" in html and "insufficient" in html
    rows = list(csv.reader(tab.export_csv(tmp_path / "audit.csv").read_text(encoding="utf-8").splitlines()))
    assert rows[0][:3] == ["group", "n", "n_pos"]
    iii = next(r for r in rows if r and r[0] == "III")
    assert iii[5] == ""  # no bare number for an insufficient group
    # the run is kept in the case store with its inputs and results, and named after a restart
    store = window.services.store
    qtbot.waitUntil(lambda: len(store.audit_runs()) == 1, timeout=10_000)
    (kept,) = store.audit_runs()
    assert kept.inputs["n_boot"] == 50 and len(kept.inputs["images"]) == n and kept.inputs["labels_sha256"]
    assert kept.inputs["failed"][0][0] == "missing_file.jpg"
    assert kept.results["overall"]["auroc"] == pytest.approx(res.overall.auroc)
    assert kept.model_sha256 == window.services.engine.card.sha256
    from mendicant_desktop.gui.audit_tab import AuditTab

    again = AuditTab(window.services)
    qtbot.addWidget(again)
    qtbot.waitUntil(lambda: "Last audit run" in again.status.text(), timeout=5000)
    assert f"{res.overall.auroc:.3f}" in again.status.text()


def test_audit_cancel_and_bad_inputs(qtbot, window, tmp_path):
    from tests.gui.conftest import lesion_image

    tab = window.audit
    tab.set_inputs(tmp_path / "nope.csv", tmp_path)
    tab.start()
    assert "Choose the labelled CSV" in tab.status.text()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    with open(tmp_path / "l.csv", "w", encoding="utf-8") as fh:
        fh.write("image,malignant,fst\n")
        for i in range(60):
            lesion_image(imgs / f"{i}.jpg", size=(120, 100), seed=i)
            fh.write(f"{i}.jpg,{i % 2},{1 + i % 2}\n")
    tab.set_inputs(tmp_path / "l.csv", imgs, n_boot=2000)
    results = []
    tab.finished.connect(results.append)
    tab.start()
    tab.cancel()
    qtbot.waitUntil(lambda: bool(results), timeout=60_000)
    assert results[0] is None and "cancelled" in tab.status.text()
    assert tab.run_btn.isEnabled()


def test_label_parsing(tmp_path):
    from mendicant_desktop.app.audit_run import load_audit_inputs as read_inputs

    p = tmp_path / "l.csv"
    p.write_text("img_id,dx,fitspatrick,gender,region,age\n"
                 "a.png,BCC,2,FEMALE,FACE,70\nb.png,NEV,,MALE,BACK,\nc.png,ACK,7,,,\nd.png,XYZ,1,,,\n",
                 encoding="utf-8")
    labels, metadata = read_inputs(p, tmp_path)
    rows, skipped = labels.rows, labels.skipped
    assert [(r.image, r.malignant, r.fst) for r in rows] == [("a.png", 1, "II"), ("b.png", 0, "unknown")]
    meta = metadata.lookup(rows[0].path).metadata
    assert meta.site == "head-or-neck" and meta.sex == "female"
    assert [s[0] for s in skipped] == ["c.png", "d.png"]
    bad = tmp_path / "bad.csv"
    bad.write_text("foo,bar\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="image column"):
        read_inputs(bad, tmp_path)


def test_audit_tab_ddi_grouping_on_fitzpatrick17k(qtbot, window, shared_data, tmp_path):
    """Fitzpatrick17k's own labels.csv columns, DDI-style groups, and the malignant-vs-benign-neoplasm line."""
    from tests.conftest import read_labels
    from tests.support.fitzpatrick import f17_subset

    out = tmp_path / "f17.csv"
    f17_subset(read_labels(shared_data, "fitzpatrick17k_clinical"), out, ("1", "2", "5", "6"), 5)
    tab = window.audit
    tab.set_inputs(out, shared_data / "fitzpatrick17k_clinical" / "images", n_boot=20, grouping="ddi")
    results = []
    tab.finished.connect(results.append)
    tab.start()
    qtbot.waitUntil(lambda: bool(results), timeout=90_000)
    run = results[0]
    assert run is not None, tab.status.text()
    assert run.grouping == "ddi" and set(run.result.groups) == {"I-II", "V-VI"}
    labels = [tab.table.item(i, 0).text() for i in range(tab.table.rowCount())]
    assert labels == ["All", "FST I–II", "FST V–VI"]
    assert run.neoplasm_result is not None and run.neoplasm_result.overall.n == 40
    assert "Malignant vs benign neoplasms" in tab.gap.text()
    assert "I-II" in run.curves() and "comparison" in tab.export_csv(tmp_path / "a.csv").read_text(encoding="utf-8")
