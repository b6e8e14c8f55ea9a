"""The window and the case store: saved as scored, reopened after a restart (and after kill -9), patient and
lesion details, delete confirmation and undo, quit confirmation, erase all local data."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.gui.conftest import drop_files, lesion_image, wait_all_scored

REPO = Path(__file__).resolve().parents[2]


def _saved(qtbot, win, n=None, timeout=20_000):
    def ok():
        cases = win.assess.model.cases
        return (n is None or len(cases) == n) and cases and not any(c.unsaved for c in cases)

    qtbot.waitUntil(ok, timeout=timeout)


def _second_window(qtbot, tiny_bundle, settings_path):
    from mendicant_desktop.gui.app import build_window

    services, win = build_window(settings_path, tiny_bundle)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    qtbot.waitUntil(lambda: services.engine is not None, timeout=30_000)
    return services, win


def test_cases_survive_a_restart_with_details(qtbot, window, tmp_path, tiny_bundle, settings_path):
    from mendicant_desktop.core.metadata import Metadata

    imgs = [lesion_image(tmp_path / f"visit {i}.jpg", seed=i) for i in range(2)]
    window.assess.patient_edit.setText("P-TEST01")
    drop_files(qtbot, window, imgs)
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 2)
    a, b = window.assess.model.cases
    assert a.patient_code == b.patient_code == "P-TEST01"
    assert a.lesion_id is not None and b.lesion_id is not None and a.lesion_id != b.lesion_id  # two lesions
    # details: label, notes, FST override and metadata, then b is attached to a's lesion (a follow-up)
    window.assess.select_case(a)
    window.assess.set_details(a, {"lesion_label": "left shoulder", "notes": "since 2019"})
    window.assess.set_fst_override(a, "VI")
    window.assess.set_metadata(a, Metadata(age=70, sex="male", site="trunk"))
    window.assess.set_details(b, {"lesion_choice": a.lesion_id, "lesion_label": "left shoulder"})
    qtbot.waitUntil(lambda: a.status == "done" and not a.unsaved and not b.unsaved, timeout=20_000)
    assert b.lesion_id == a.lesion_id
    pred_a = a.prediction
    store_path = window.services.store.path
    window.close()
    assert not window.isVisible()

    services, win2 = _second_window(qtbot, tiny_bundle, settings_path)
    assert services.store.path == store_path
    qtbot.waitUntil(lambda: win2.assess.model.rowCount() == 2, timeout=10_000)
    ra, rb = win2.assess.model.cases
    assert (ra.name, rb.name) == ("visit 0.jpg", "visit 1.jpg")
    assert ra.patient_code == "P-TEST01" and ra.lesion_label == "left shoulder" and ra.notes == "since 2019"
    assert ra.fst_override == "VI" and ra.metadata == Metadata(age=70, sex="male", site="trunk")
    assert ra.prediction.probabilities == pytest.approx(pred_a.probabilities, abs=1e-9)
    assert ra.prediction.risk == pred_a.risk and ra.thumb is not None
    assert rb.lesion_id == ra.lesion_id
    assert [c.name for c in win2.assess.lesion_visits(ra)] == ["visit 0.jpg", "visit 1.jpg"]
    # a re-score (after the metadata change above) dates the result, not the visit: the order stays
    import datetime as dt

    ra.scored, rb.scored = dt.datetime(2030, 1, 1), dt.datetime(2020, 1, 1)
    assert [c.name for c in win2.assess.lesion_visits(ra)] == ["visit 0.jpg", "visit 1.jpg"]
    # selecting a reopened case reads the kept copy again: heat map and model input are back, same score
    win2.assess.select_case(ra)
    qtbot.waitUntil(lambda: ra.x is not None and ra.prediction.cam is not None, timeout=20_000)
    assert ra.prediction.probabilities == pytest.approx(pred_a.probabilities, abs=1e-6)
    assert win2.assess.view.view.overlay_visible()
    # the search and filters
    win2.assess.search.setText("shoulder")
    assert win2.assess.visible_cases() == [ra, rb]
    win2.assess.search.setText("no such")
    assert win2.assess.visible_cases() == []
    win2.assess.search.clear()
    win2.assess.risk_filter.setCurrentIndex(win2.assess.risk_filter.findData(pred_a.risk))
    assert ra in win2.assess.visible_cases()
    win2.assess.risk_filter.setCurrentIndex(win2.assess.risk_filter.findData(
        "low" if pred_a.risk == "high" else "high"))
    assert ra not in win2.assess.visible_cases()
    win2.close()


def test_remove_asks_and_can_be_undone(qtbot, window, tmp_path, tiny_bundle, settings_path):
    imgs = [lesion_image(tmp_path / f"r{i}.jpg", seed=i) for i in range(3)]
    window.add_paths(imgs)
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 3)
    asked = []
    window.assess.confirm = lambda title, text, yes="": asked.append(text) or False
    window.assess.select_row(1)
    assert not window.assess.remove_current()  # "Cancel": nothing happens
    assert window.assess.model.rowCount() == 3 and asked and "Remove r1.jpg" in asked[0]
    window.assess.confirm = lambda *a, **k: True
    assert window.assess.remove_current()
    assert [c.name for c in window.assess.model.cases] == ["r0.jpg", "r2.jpg"]
    assert window.act_undo.isEnabled()
    store = window.services.store
    qtbot.waitUntil(lambda: len(store.visits()) == 2, timeout=10_000)
    window.act_undo.trigger()  # Ctrl+Z
    qtbot.waitUntil(lambda: window.assess.model.rowCount() == 3, timeout=10_000)
    qtbot.waitUntil(lambda: len(store.visits()) == 3, timeout=10_000)
    assert window.assess.current_case().name == "r1.jpg"
    # clear all: one confirmation, one undoable delete
    assert window.assess.clear()
    qtbot.waitUntil(lambda: store.visits() == [], timeout=10_000)
    window.assess.undo_remove()
    qtbot.waitUntil(lambda: len(store.visits()) == 3 and window.assess.model.rowCount() == 3, timeout=10_000)


def test_the_real_confirmation_box_and_the_del_key(qtbot, real_dialogs, window, tmp_path):
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox

    window.add_paths([lesion_image(tmp_path / "k.jpg")])
    wait_all_scored(qtbot, window)
    seen = []

    def answer(button):
        def go():
            box = QApplication.activeModalWidget()
            if not isinstance(box, QMessageBox):
                QTimer.singleShot(50, go)
                return
            seen.append(box.text())
            (box.button(QMessageBox.StandardButton.Cancel) if button == "cancel"
             else next(b for b in box.buttons() if b.text() == button)).click()
        QTimer.singleShot(50, go)

    window.assess.list.setFocus()
    answer("cancel")
    window.act_remove.trigger()
    assert window.assess.model.rowCount() == 1 and "Remove k.jpg" in seen[0]
    answer("Remove")
    window.act_remove.trigger()
    assert window.assess.model.rowCount() == 0


def test_quit_with_unsaved_cases_asks(qtbot, window, tmp_path):
    from PySide6.QtGui import QCloseEvent

    window.add_paths([lesion_image(tmp_path / "q.jpg")])
    case = window.assess.model.cases[0]
    case.save_error = "disk full"  # as after a failed write
    asked = []
    window.assess.confirm = lambda title, text, yes="": asked.append(text) or False
    e = QCloseEvent()
    window.closeEvent(e)
    assert not e.isAccepted() and "not saved yet" in asked[0] and "could not be saved" in asked[0]
    assert window.act_quit.shortcut().toString() == "Ctrl+Q"
    window.act_quit.trigger()  # Ctrl+Q goes through the same question
    assert len(asked) == 2 and window.isVisible()
    case.save_error = ""
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 1)
    window.assess.confirm = lambda *a, **k: pytest.fail("asked although everything is saved")
    e = QCloseEvent()
    window.closeEvent(e)
    assert e.isAccepted()


def test_erase_all_local_data(qtbot, window, tmp_path):
    window.add_paths([lesion_image(tmp_path / f"e{i}.jpg", seed=i) for i in range(2)])
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 2)
    store = window.services.store
    window.assess.keeper.save_audit({"labels": "x.csv"}, {"auroc": 0.5})
    qtbot.waitUntil(lambda: len(store.audit_runs()) == 1, timeout=5000)
    copies = [c for c in store.images_dir.rglob("*") if c.is_file()]
    assert len(copies) == 2
    window.assess.confirm = lambda *a, **k: False
    assert not window.erase_all()
    assert window.assess.model.rowCount() == 2
    window.assess.confirm = lambda *a, **k: True
    assert window.erase_all()
    qtbot.waitUntil(lambda: store.visits() == [] and store.audit_runs() == [] and store.patients() == [],
                    timeout=10_000)
    assert window.assess.model.rowCount() == 0 and not store.images_dir.exists()


def test_settings_dialog_has_the_erase_button(qtbot, window):
    from mendicant_desktop.gui.settings_dialog import SettingsDialog

    dlg = SettingsDialog(window.settings, 0.13, window, store=window.services.store)
    qtbot.addWidget(dlg)
    fired = []
    dlg.eraseRequested.connect(lambda: fired.append(1))
    assert dlg.copy_images.isChecked() and not dlg.identify.isChecked()
    dlg.erase_btn.click()
    assert fired == [1]
    dlg.copy_images.setChecked(False)
    dlg.identify.setChecked(True)
    dlg.clinician.setText("Dr A. Example")
    dlg.accept()
    assert not window.settings.copy_images and window.services.store.copy_images is False
    assert window.settings.identify_patients and window.settings.clinician == "Dr A. Example"
    assert window.assess.view.details.patient_name.isVisibleTo(window.assess.view.details)


KILLED = textwrap.dedent("""
    import os, sys, time
    os.environ["QT_QPA_PLATFORM"] = "offscreen"
    from pathlib import Path
    from mendicant_desktop.gui.app import build_window, create_app, _wait
    app = create_app()
    services, win = build_window(sys.argv[1], sys.argv[2])
    win.show()
    _wait(app, lambda: services.engine is not None, 60)
    win.add_paths(sys.argv[3:])
    while True:  # report every case that the store holds, keep the event loop (and the saves) running
        app.processEvents()
        done = [c.name for c in win.assess.model.cases if c.visit_id is not None and not c.unsaved]
        print("saved", len(done), flush=True)
        time.sleep(0.05)
""")


def test_kill_9_mid_session_loses_no_saved_case(qtbot, tmp_path, tiny_bundle, settings_path):
    imgs = [str(lesion_image(tmp_path / f"k{i}.jpg", seed=i)) for i in range(12)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(settings_path), str(tiny_bundle), *imgs],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    saved = 0
    deadline = time.monotonic() + 120
    try:
        while saved < 4 and time.monotonic() < deadline:  # killed mid-session: some saved, some still queued
            line = proc.stdout.readline()
            if not line:
                break
            saved = int(line.split()[1])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert saved >= 4, "the session did not save 4 cases in time"
    services, win = _second_window(qtbot, tiny_bundle, settings_path)
    qtbot.waitUntil(lambda: win.assess.model.rowCount() >= saved, timeout=10_000)
    names = [c.name for c in win.assess.model.cases]
    assert names[:saved] == [f"k{i}.jpg" for i in range(saved)]
    assert services.store.integrity_ok()
    win.close()


def test_follow_up_view_flags_a_rise_across_the_threshold(qtbot, window, tmp_path, tiny_bundle, settings_path):
    first = lesion_image(tmp_path / "visit A.jpg", seed=3)
    window.assess.patient_edit.setText("P-FOLLOW")
    (a,) = window.add_paths([first])
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 1)
    assert not window.assess.view.followup.isVisible()  # one visit: no follow-up yet
    (b,) = window.assess.add_followup(a, [lesion_image(tmp_path / "visit B.jpg", seed=11, size=(300, 260))])
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 2)
    assert b.lesion_id == a.lesion_id and b.patient_code == "P-FOLLOW" and b.metadata == a.metadata
    ma, mb = a.prediction.malignancy, b.prediction.malignancy
    assert ma != mb
    lo, hi = (a, b) if ma < mb else (b, a)
    window.assess.set_details(lo, {"visit_date": "2026-03-01"})
    window.assess.set_details(hi, {"visit_date": "2026-09-01"})
    window.settings.threshold = (ma + mb) / 2  # the later visit crosses it
    window.assess.select_case(hi)
    card = window.assess.view.followup
    qtbot.waitUntil(lambda: card.isVisible() and card.flagged, timeout=10_000)
    assert [p.date for p in card.plot.points] == ["2026-03-01", "2026-09-01"]
    assert card.plot.current == 1 and card.plot.change.crossed_up
    assert "crossed the" in card.text.text() and "Rose across the threshold" in card.flag.text()
    # the earlier visit: the same plot, its point current; the flag is about the change into the later one
    window.assess.select_case(lo)
    assert card.isVisible() and card.plot.current == 0
    dlg = card.open_compare()
    qtbot.addWidget(dlg)
    assert dlg.case_at(0) is lo and dlg.case_at(1) is hi
    assert "crossed the" in dlg.change.text()
    dlg.close()
    # a threshold above both: no flag
    window.settings.threshold = min(0.99, max(ma, mb) + 0.01)
    window.assess.select_case(hi)
    assert card.isVisible() and not card.flagged
    window.settings.threshold = (ma + mb) / 2
    _saved(qtbot, window, 2)
    window.close()
    # after a restart the follow-up is there again
    services, win2 = _second_window(qtbot, tiny_bundle, settings_path)
    qtbot.waitUntil(lambda: win2.assess.model.rowCount() == 2, timeout=10_000)
    later = next(c for c in win2.assess.model.cases if c.visit_date == "2026-09-01")
    win2.assess.select_case(later)
    qtbot.waitUntil(lambda: win2.assess.view.followup.isVisible() and win2.assess.view.followup.flagged,
                    timeout=10_000)
    win2.close()


def test_v_vi_caution_on_a_case_set_to_v_vi(qtbot, window, tmp_path):
    import csv

    from mendicant_desktop.app.quality import FST_CAUTION

    (case,) = window.add_paths([lesion_image(tmp_path / "dark.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    assert FST_CAUTION not in case.warnings  # the synthetic light skin is not V–VI
    view.fst_combo.setCurrentIndex(view.fst_combo.findData("VI"))
    assert case.fst_override == "VI" and FST_CAUTION in case.warnings
    assert view.warn_card.isVisibleTo(view) and "V–VI" in view.warn_text.text()
    out = window.export_csv(str(tmp_path / "s.csv"))
    row = next(csv.DictReader(out.open(encoding="utf-8")))
    assert FST_CAUTION in row["warnings"] and row["fst_override"] == "VI"
    view.fst_combo.setCurrentIndex(view.fst_combo.findData(None))
    assert FST_CAUTION not in case.warnings and "V–VI" not in view.warn_text.text()


def test_queued_cases_say_the_model_failed_verification(qtbot, tmp_path, settings_path, tiny_bundle):
    import shutil

    from mendicant_desktop.gui.app import build_window, create_app
    from mendicant_desktop.gui.cases import CaseRole

    folder = tmp_path / "tampered"
    shutil.copytree(tiny_bundle.parent, folder)
    onnx = next(folder.glob("*.onnx"))
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte: the sha256 no longer matches the card
    onnx.write_bytes(bytes(data))
    create_app()
    services, win = build_window(settings_path, folder / tiny_bundle.name)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: services.error is not None, timeout=10_000)
    assert "verification" in services.error
    (case,) = win.add_paths([lesion_image(tmp_path / "q.jpg")])
    assert case.status == "queued"
    assert win.assess.model.not_scored_reason == "not scored: the model failed verification"
    ix = win.assess.model.index(0)
    assert ix.data(CaseRole) is case and "the model failed verification" in ix.data(Qt_tooltip())
    win.close()


def Qt_tooltip():  # noqa: N802
    from PySide6.QtCore import Qt

    return Qt.ItemDataRole.ToolTipRole


def test_the_report_names_patient_lesion_clinician_and_no_local_path(qtbot, window, tmp_path):
    import dataclasses

    from mendicant_desktop.gui import report
    from mendicant_desktop.gui.text import prob_text

    folder = tmp_path / "private folder name"
    folder.mkdir()
    window.assess.patient_edit.setText("P-REPORT")
    (case,) = window.add_paths([lesion_image(folder / "lesion.jpg")])
    wait_all_scored(qtbot, window)
    window.assess.set_details(case, {"lesion_label": "left calf", "notes": "Bleeds when scratched",
                                     "visit_date": "2026-11-30"})
    card = window.services.engine.card
    d = dataclasses.replace(report.snapshot(case, case.display, card.name, card.version, card.sha256),
                            clinician="Dr A. Example", clinic="Harbour Clinic", model_threshold=card.threshold)
    html = report.report_html(d)
    for s in ("P-REPORT", "left calf", "2026-11-30", "Dr A. Example", "Harbour Clinic", "Bleeds when scratched",
              "lesion.jpg"):
        assert s in html, s
    assert "private folder name" not in html and str(tmp_path) not in html
    for p in case.prediction.probabilities:  # the same rounding as the screen's bars ("<0.1%", not "0.0%")
        assert prob_text(p) in html
    assert prob_text(0.0004) == "<0.1%" and prob_text(0.358) == "35.8%"


def test_multi_case_report_and_printing(qtbot, window, tmp_path):
    from PySide6.QtGui import QPdfWriter

    cases = window.add_paths([lesion_image(tmp_path / f"m{i}.jpg", seed=i) for i in range(3)])
    wait_all_scored(qtbot, window)
    done = []
    window.pdfExported.connect(done.append)
    out = tmp_path / "all.pdf"
    window.export_pdf(str(out), cases=cases)
    qtbot.waitUntil(lambda: bool(done), timeout=30_000)
    import re

    data = out.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 3  # a page per case
    # any paged device stands in for the printer the dialog returns (a QPrinter may wait on CUPS here)
    printer = QPdfWriter(str(tmp_path / "printed.pdf"))
    assert window.print_report(printer=printer, ask=False)
    del printer
    assert (tmp_path / "printed.pdf").read_bytes().startswith(b"%PDF")
    assert window.act_print.shortcut().toString() == "Ctrl+P"


def test_the_window_opens_a_schema_1_store_migrated(qtbot, tmp_path, tiny_bundle, settings_path):
    """A case store written by the first release (schema 1) opens in the window: migrated, its cases listed."""
    from mendicant_desktop.app.paths import data_dir
    from mendicant_desktop.app.store import SCHEMA_VERSION
    from tests.support.synthetic import write_schema1_store

    path = data_dir() / "cases.sqlite3"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_schema1_store(path, "left arm").close()
    services, win = _second_window(qtbot, tiny_bundle, settings_path)
    assert services.store is not None and services.store.path == path, services.store_error
    assert services.store.schema_version == SCHEMA_VERSION
    qtbot.waitUntil(lambda: win.assess.model.rowCount() == 1, timeout=10_000)
    (c,) = win.assess.model.cases
    assert (c.name, c.patient_code, c.lesion_label, c.visit_date) == ("old.jpg", "P-OLD001", "left arm", "2025-05-01")
    win.assess.search.setText("left arm")
    assert win.assess.visible_cases() == [c]
    win.close()


def test_notes_typed_but_not_left_are_saved_on_quit(qtbot, window, tmp_path, tiny_bundle, settings_path):
    """Ctrl+Q while the cursor is still in the notes: the text is taken into the case and saved before the window
    closes (the question about unsaved cases is answered "quit" here), and it is there after a restart."""
    (case,) = window.add_paths([lesion_image(tmp_path / "n.jpg")])
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 1)
    window.assess.select_case(case)
    notes = window.assess.view.details.notes
    notes.setFocus()
    notes.setPlainText("itches at night")  # typed, the field not left: no edit emitted yet
    assert case.notes == "" and window.assess.view.details.pending()
    window.act_quit.trigger()
    assert not window.isVisible() and case.notes == "itches at night"
    services, win2 = _second_window(qtbot, tiny_bundle, settings_path)
    qtbot.waitUntil(lambda: win2.assess.model.rowCount() == 1, timeout=10_000)
    assert win2.assess.model.cases[0].notes == "itches at night"
    win2.close()


def test_the_case_on_screen_after_a_restart_gets_its_heat_map(qtbot, window, tmp_path, tiny_bundle, settings_path):
    """The case selected at start-up (before the model is ready, or after) is read again from its kept copy once
    the model is there: its heat map is shown without selecting another case and back."""
    window.add_paths([lesion_image(tmp_path / f"r{i}.jpg", seed=i) for i in range(2)])
    wait_all_scored(qtbot, window)
    _saved(qtbot, window, 2)
    window.close()
    from mendicant_desktop.gui.app import build_window

    services, win = build_window(settings_path, tiny_bundle)  # the restore and the model load race here
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: services.engine is not None and win.assess.model.rowCount() == 2, timeout=30_000)
    qtbot.waitUntil(lambda: win.assess.current_case() is not None, timeout=10_000)
    cur = win.assess.current_case()
    qtbot.waitUntil(lambda: cur.x is not None and cur.prediction.cam is not None, timeout=20_000)
    qtbot.waitUntil(lambda: win.assess.view.view.overlay_visible(), timeout=5_000)
    win.close()
