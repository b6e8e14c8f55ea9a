"""The Assess tab end to end, offscreen: drops, errors, re-scoring, FST override, overlay, exports."""

from __future__ import annotations

import csv
import re

import pytest

from tests.gui.conftest import drop_files, lesion_image, real_or_synthetic_images, wait_all_scored


def test_drop_real_and_corrupt_files(qtbot, window, tmp_path):
    good = real_or_synthetic_images(tmp_path, 2)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 50)
    text = tmp_path / "notes.png"
    text.write_text("<html>not an image</html>")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert window.assess.stack.currentIndex() == 0  # the drop zone is showing
    shown = []
    window.assess.view.resultShown.connect(shown.append)
    drop_files(qtbot, window, [*good, corrupt, text, empty])
    assert window.assess.stack.currentIndex() == 1
    wait_all_scored(qtbot, window)
    cases = window.assess.model.cases
    assert [c.status for c in cases] == ["done", "done", "error", "error", "error"]
    assert cases[2].error and cases[3].error == "not a recognised image format"
    assert "empty" in cases[4].error
    # the first case was selected at once and its result displayed, heat map included
    assert shown and shown[0] is cases[0]
    assert window.assess.current_case() is cases[0]
    assert window.assess.view.view.overlay_visible()
    p = cases[0].prediction
    assert p is not None and abs(sum(p.probabilities) - 1) < 1e-4 and p.cam is not None
    # an error case is shown as such, without a crash or a dialog
    window.assess.select_row(2)
    assert window.assess.view.error_card.isVisible()
    assert not window.assess.view.assess_card.isVisible()
    assert "could not be read" in window.queue_label.text()


def test_drop_folder_and_paste(qtbot, window, tmp_path):
    from PySide6.QtGui import QGuiApplication, QImage

    folder = tmp_path / "day"
    (folder / "sub").mkdir(parents=True)
    lesion_image(folder / "a.jpg", seed=1)
    lesion_image(folder / "sub" / "b.JPG", seed=2)
    (folder / "readme.txt").write_text("not an image")
    drop_files(qtbot, window, [folder])
    wait_all_scored(qtbot, window)
    assert [c.name for c in window.assess.model.cases] == ["a.jpg", "b.JPG"]
    img = QImage(str(folder / "a.jpg"))
    QGuiApplication.clipboard().setImage(img)
    window.act_paste.trigger()
    wait_all_scored(qtbot, window)
    pasted = window.assess.model.cases[-1]
    assert pasted.path is None and pasted.status == "done" and pasted.name.startswith("Pasted image")


def test_metadata_change_rescores(qtbot, window, tmp_path):
    from mendicant_desktop.core.metadata import Metadata

    img = lesion_image(tmp_path / "m.jpg")
    window.add_paths([img])
    wait_all_scored(qtbot, window)
    case = window.assess.current_case()
    before = case.prediction
    view = window.assess.view
    view.age.setValue(80)
    view.sex.setCurrentIndex(view.sex.findData("male"))
    view.site.setCurrentIndex(view.site.findData("trunk"))
    qtbot.waitUntil(lambda: case.metadata == Metadata(age=80, sex="male", site="trunk")
                    and case.status == "done" and case.prediction is not before, timeout=10_000)
    qtbot.waitUntil(lambda: case.prediction.probabilities != before.probabilities, timeout=10_000)
    # the same metadata through the engine directly gives the same probabilities
    direct = window.services.engine.predict_preprocessed(case.x[None], [case.metadata], cam=False)[0]
    assert direct.probabilities == pytest.approx(case.prediction.probabilities, abs=1e-6)
    # the view shows the new result
    assert f"{100 * case.prediction.malignancy:.1f}%" in view.summary.text() or view.gauge._score == pytest.approx(
        case.prediction.malignancy)


def test_fst_override_is_stored_and_exported(qtbot, window, tmp_path):
    img = lesion_image(tmp_path / "f.jpg")
    window.add_paths([img])
    wait_all_scored(qtbot, window)
    case = window.assess.current_case()
    assert case.skin is not None  # estimated (or unknown with a reason)
    assert case.skin.fst == "unknown" and case.skin.reason or case.skin.ita is not None
    view = window.assess.view
    assert "estimated" in view.skin_head.text() or "Unknown" in view.skin_head.text()
    view.fst_combo.setCurrentIndex(view.fst_combo.findData("V"))
    assert case.fst_override == "V" and case.fst == "V" and case.fst_source == "clinician"
    assert "set by the clinician" in view.skin_head.text()
    out = window.export_csv(str(tmp_path / "session.csv"))
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert rows[0]["fst_override"] == "V" and rows[0]["fst_used"] == "V"
    assert rows[0]["fst_estimate"] == case.skin.fst
    view.fst_combo.setCurrentIndex(0)  # back to the estimate
    assert case.fst_override is None


def test_overlay_toggle_opacity_colormap(qtbot, window, tmp_path):
    window.add_paths([lesion_image(tmp_path / "o.jpg")])
    wait_all_scored(qtbot, window)
    v = window.assess.view
    assert v.view.overlay_visible()
    window.act_overlay.trigger()
    assert not v.view.overlay_visible() and not v.overlay_box.isChecked()
    assert window.settings.show_overlay is False
    window.act_overlay.trigger()
    assert v.view.overlay_visible()
    v.opacity.setValue(80)
    assert v.view._overlay.opacity() == pytest.approx(0.8)
    v.colormap.setCurrentText("viridis")
    assert window.settings.colormap == "viridis" and window.settings.opacity == pytest.approx(0.8)
    # zoom and fit
    z = v.view.zoom()
    window.act_zoom_in.trigger()
    assert v.view.zoom() > z
    window.act_fit.trigger()
    assert v.view.zoom() == pytest.approx(z, rel=0.05)


def test_threshold_change_rebands_without_rescoring(qtbot, window, tmp_path):
    window.add_paths([lesion_image(tmp_path / "t.jpg")])
    wait_all_scored(qtbot, window)
    case = window.assess.current_case()
    mal = case.prediction.malignancy
    window.settings.threshold = max(0.01, mal - 0.005)
    assert case.prediction.risk == "high" and case.prediction.malignancy == mal
    window.settings.threshold = min(0.99, mal + 0.005)
    assert case.prediction.risk == "low"
    window.settings.threshold = None
    assert case.prediction.threshold == window.services.engine.card.threshold


def test_pdf_report_is_valid(qtbot, window, tmp_path):
    window.add_paths(real_or_synthetic_images(tmp_path, 1))
    wait_all_scored(qtbot, window)
    window.assess.view.fst_combo.setCurrentIndex(window.assess.view.fst_combo.findData("III"))
    out = tmp_path / "report.pdf"
    done = []
    window.pdfExported.connect(done.append)
    window.export_pdf(str(out))
    qtbot.waitUntil(lambda: bool(done), timeout=20_000)
    data = out.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 1
    assert data.rstrip().endswith(b"%%EOF")
    html = __import__("mendicant_desktop.gui.report", fromlist=["x"]).report_html(
        __import__("mendicant_desktop.gui.report", fromlist=["x"]).snapshot(
            window.assess.current_case(), window.assess.current_case().display, "m", "1", "ab" * 32))
    assert "Decision support, not a diagnosis" in html and "Fitzpatrick III" in html and "ab" * 32 in html


def test_keyboard_navigation(qtbot, window, tmp_path):
    window.add_paths([lesion_image(tmp_path / f"k{i}.jpg", seed=i) for i in range(3)])
    wait_all_scored(qtbot, window)
    assert window.assess.list.currentIndex().row() == 0
    window.act_next.trigger()
    window.act_next.trigger()
    assert window.assess.list.currentIndex().row() == 2
    window.act_prev.trigger()
    assert window.assess.list.currentIndex().row() == 1
    assert window.act_next.shortcuts() and window.act_open.shortcuts() and window.act_pdf.shortcuts()
    window.act_remove.trigger()
    assert window.assess.model.rowCount() == 2


def test_model_failure_is_shown_not_raised(qtbot, tmp_path, settings_path):
    from mendicant_desktop.gui.app import build_window, create_app

    create_app()
    services, win = build_window(settings_path, tmp_path / "missing.json")
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: services.error is not None, timeout=10_000)
    assert "not found" in services.error
    assert win.assess.banner.isVisible()
    assert "No model loaded" in win.model_tab.browser.toPlainText()
    win.add_paths([lesion_image(tmp_path / "q.jpg")])
    assert win.assess.model.cases[0].status == "queued"  # waits; no crash
    win.close()


def test_drop_finds_what_batch_finds(qtbot, window, tmp_path):
    """The GUI's folder drop uses app.inputs like --batch: content-sniffed images count, a missing path is an
    error case at once."""
    from mendicant_desktop.app.inputs import iter_inputs

    folder = tmp_path / "mixed"
    folder.mkdir()
    lesion_image(folder / "a.jpg", seed=1)
    (folder / "no_extension").write_bytes((folder / "a.jpg").read_bytes())  # a JPEG without an extension
    (folder / "notes.txt").write_text("not an image")
    missing = tmp_path / "gone.jpg"
    cases = window.add_paths([folder, missing])
    assert [c.source for c in cases] == [i.path for i in iter_inputs([folder, missing])]
    assert [c.name for c in cases] == ["a.jpg", "no_extension", "gone.jpg"]
    assert cases[2].status == "error" and cases[2].error == "file not found"
    wait_all_scored(qtbot, window)
    assert [c.status for c in cases] == ["done", "done", "error"]
