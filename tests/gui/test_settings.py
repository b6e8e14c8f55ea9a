"""Settings persist in an INI file; portable mode keeps them beside the executable."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_settings_persist_across_instances(qtbot, settings_path):
    from mendicant_desktop.gui.settings import AppSettings

    s = AppSettings(settings_path)
    assert s.threshold is None and s.colormap == "jet" and s.estimate_fst is True
    s.threads = 3
    s.threshold = 0.27
    s.colormap = "viridis"
    s.opacity = 0.6
    s.estimate_fst = False
    s.show_overlay = False
    del s
    t = AppSettings(settings_path)
    assert (t.threads, t.threshold, t.colormap, t.opacity, t.estimate_fst, t.show_overlay) == (
        3, 0.27, "viridis", 0.6, False, False)
    assert t.effective_threshold(0.5) == 0.27
    t.threshold = None  # reset to the model default
    assert AppSettings(settings_path).threshold is None
    assert AppSettings(settings_path).effective_threshold(0.41) == 0.41
    assert settings_path.is_file()


def test_bad_values_fall_back(qtbot, settings_path):
    from mendicant_desktop.gui.settings import AppSettings

    settings_path.parent.mkdir(parents=True, exist_ok=True)
    settings_path.write_text("[inference]\nthreads=lots\nthreshold=7\n[overlay]\ncolormap=rainbow\nopacity=x\n")
    s = AppSettings(settings_path)
    assert s.threads == s.defaults.threads
    assert s.threshold is None
    assert s.colormap == "jet" and s.opacity == pytest.approx(0.45)
    with pytest.raises(ValueError):
        s.threshold = 1.5
    with pytest.raises(ValueError):
        s.colormap = "rainbow"


def test_locations(monkeypatch, tmp_path):
    import sys

    from mendicant_desktop.gui import settings as st

    monkeypatch.delenv("MENDICANT_CONFIG_DIR", raising=False)
    monkeypatch.setenv("MENDICANT_PORTABLE", "1")
    assert st.is_portable()
    assert st.config_dir() == Path(sys.executable).resolve().parent / st.PORTABLE_DIR
    monkeypatch.setenv("MENDICANT_PORTABLE", "0")
    assert not st.is_portable()
    assert "MENDICANT" in str(st.config_dir())
    # a portable.txt marker beside the executable
    monkeypatch.delenv("MENDICANT_PORTABLE")
    fake_exe = tmp_path / "app" / "mendicant-desktop"
    fake_exe.parent.mkdir()
    fake_exe.write_text("")
    (fake_exe.parent / st.PORTABLE_MARKER).write_text("")
    monkeypatch.setattr(sys, "executable", str(fake_exe))
    assert st.is_portable()
    assert st.settings_path() == fake_exe.parent / st.PORTABLE_DIR / st.SETTINGS_FILE
    monkeypatch.setenv("MENDICANT_CONFIG_DIR", str(tmp_path / "cfg"))
    assert st.settings_path() == tmp_path / "cfg" / st.SETTINGS_FILE


def test_settings_dialog_applies_and_resets(qtbot, settings_path):
    from mendicant_desktop.gui.settings import AppSettings
    from mendicant_desktop.gui.settings_dialog import SettingsDialog

    s = AppSettings(settings_path)
    dlg = SettingsDialog(s, model_threshold=0.4)
    qtbot.addWidget(dlg)
    dlg.threads.setValue(1)
    dlg.threshold.setValue(0.3)
    dlg.colormap.setCurrentText("inferno")
    dlg.opacity.setValue(70)
    dlg.estimate_fst.setChecked(False)
    dlg.accept()
    s2 = AppSettings(settings_path)
    assert (s2.threads, s2.threshold, s2.colormap, s2.opacity, s2.estimate_fst) == (1, 0.3, "inferno", 0.7, False)
    dlg = SettingsDialog(s2, model_threshold=0.4)
    qtbot.addWidget(dlg)
    assert dlg.threshold.value() == pytest.approx(0.3)
    dlg.reset_thr.click()
    assert dlg.threshold.value() == pytest.approx(0.4)
    dlg.accept()
    assert AppSettings(settings_path).threshold is None
