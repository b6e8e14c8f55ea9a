"""Threshold policy: the card's threshold by default; a site file IT deploys sets another and may lock it; a
non-default threshold is labelled as such on screen and in the CSV."""

import csv

import pytest

from tests.gui.conftest import lesion_image, wait_all_scored


def _site(tmp_path, monkeypatch, value, may_change):
    p = tmp_path / "site.ini"
    p.write_text(f"[threshold]\nvalue={value}\nuser_may_change={'true' if may_change else 'false'}\n")
    monkeypatch.setenv("MENDICANT_SITE_CONFIG", str(p))
    return p


def test_no_site_file_uses_the_cards_threshold(qtbot, window, tmp_path):
    card_t = window.services.engine.card.threshold
    assert window.services.threshold == card_t and window.services.threshold_source == "model"
    assert "default" not in window.model_label.text()


def test_a_locked_site_threshold(qtbot, tmp_path, monkeypatch, settings_path, tiny_bundle):
    from mendicant_desktop.gui.app import build_window, create_app
    from mendicant_desktop.gui.settings_dialog import SettingsDialog
    from mendicant_desktop.gui.text import pct

    site = _site(tmp_path, monkeypatch, 0.2, False)
    create_app()
    services, win = build_window(settings_path, tiny_bundle)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: services.engine is not None, timeout=30_000)
    card_t = services.engine.card.threshold
    assert card_t != 0.2
    assert services.threshold == 0.2 and services.threshold_source == "site"
    assert services.settings.site.locked and services.settings.site.path == site
    with pytest.raises(PermissionError, match="site policy"):
        services.settings.threshold = 0.3
    # a value left in the user's file from before does not override the lock
    services.settings._qs.setValue("inference/threshold", 0.4)
    assert services.threshold == 0.2
    win._engine_ready(services.engine)
    assert f"threshold 20% (site; default {pct(card_t)})" in win.model_label.text()
    assert "site threshold set by IT; the model's validated default is" in win.model_label.toolTip()
    dlg = SettingsDialog(services.settings, card_t, win, store=services.store)
    qtbot.addWidget(dlg)
    assert not dlg.threshold.isEnabled() and not dlg.reset_thr.isEnabled()
    assert "Users cannot change it" in dlg.thr_note.text()
    dlg.accept()  # OK with the lock: nothing raised, the site value stays
    assert services.threshold == 0.2
    (case,) = win.add_paths([lesion_image(tmp_path / "t.jpg")])
    wait_all_scored(qtbot, win)
    assert case.prediction.threshold == 0.2
    assert win.assess.view.gauge.model_default == card_t
    out = win.export_csv(str(tmp_path / "s.csv"))
    row = next(csv.DictReader(out.open(encoding="utf-8")))
    assert float(row["threshold"]) == 0.2 and row["threshold_source"] == "site"
    assert float(row["threshold_default"]) == pytest.approx(card_t)
    win.close()


def test_a_site_default_users_may_change(qtbot, tmp_path, monkeypatch, settings_path):
    from mendicant_desktop.gui.settings import AppSettings

    _site(tmp_path, monkeypatch, 0.25, True)
    s = AppSettings(settings_path)
    assert not s.site.locked
    assert s.effective_threshold(0.13) == 0.25 and s.threshold_source(0.13) == "site"
    s.threshold = 0.3
    assert s.effective_threshold(0.13) == 0.3 and s.threshold_source(0.13) == "user"
    s.threshold = None
    assert s.effective_threshold(0.13) == 0.25
    monkeypatch.setenv("MENDICANT_SITE_CONFIG", str(tmp_path / "missing.ini"))
    assert AppSettings(settings_path).effective_threshold(0.13) == 0.13


def test_text_of_a_non_default_threshold():
    from mendicant_desktop.gui.text import threshold_text

    assert threshold_text(0.13, 0.13, "model") == "13%"
    assert threshold_text(0.3, 0.13, "user") == "30% (changed in Settings; the model's validated default is 13%)"


def test_a_user_threshold_is_marked_on_screen_in_the_csv_and_in_the_pdf(qtbot, window, tmp_path):
    import dataclasses
    import html

    from mendicant_desktop.gui import report
    from mendicant_desktop.gui.text import pct

    card_t = window.services.engine.card.threshold
    window.settings.threshold = 0.3
    assert window.services.threshold_source == "user"
    (case,) = window.add_paths([lesion_image(tmp_path / "u.jpg")])
    wait_all_scored(qtbot, window)
    assert case.prediction.threshold == 0.3
    note = f"This threshold was changed in Settings; the model's validated default is {pct(card_t)}."
    assert note in window.assess.view.summary.text()  # the case on screen
    row = next(csv.DictReader(window.export_csv(str(tmp_path / "u.csv")).open(encoding="utf-8")))
    assert (float(row["threshold"]), row["threshold_source"]) == (0.3, "user")
    assert float(row["threshold_default"]) == pytest.approx(card_t)
    card = window.services.engine.card
    d = dataclasses.replace(report.snapshot(case, case.display, card.name, card.version, card.sha256),
                            model_threshold=card_t, threshold_source=window.services.threshold_source)
    page = html.unescape(report.report_html(d))
    assert f"operating threshold 30% (changed in Settings; the model's validated default is {pct(card_t)})" in page
    assert note in page
    # back to the card's threshold: no mark anywhere
    window.settings.threshold = None
    qtbot.waitUntil(lambda: case.prediction.threshold == card_t, timeout=10_000)
    window.assess.view.show_case(case, image_changed=False)
    assert "validated default" not in window.assess.view.summary.text()
    row = next(csv.DictReader(window.export_csv(str(tmp_path / "m.csv")).open(encoding="utf-8")))
    assert row["threshold_source"] == "model"


def test_threshold_cells_of_the_row_schema():
    from mendicant_desktop.app.rows import THRESHOLD_COLUMNS, threshold_cells
    from mendicant_desktop.gui.report import EXPORT_COLUMNS

    assert set(THRESHOLD_COLUMNS) <= set(EXPORT_COLUMNS)
    assert threshold_cells(0.13, 0.13, "site") == {"threshold": 0.13, "threshold_default": 0.13,
                                                   "threshold_source": "model"}
    assert threshold_cells(0.2, 0.13, "site")["threshold_source"] == "site"
    assert threshold_cells(0.2, 0.13, "user")["threshold_source"] == "user"
    # a threshold that differs from the card's is never reported as the model's
    assert threshold_cells(0.2, 0.13, "model")["threshold_source"] == "user"
