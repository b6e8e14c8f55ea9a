"""Without the X libraries Qt's xcb plugin needs, the window says which packages to install and exits non-zero."""

from mendicant_desktop.gui import app as gui_app


def test_missing_xcb_libraries_are_named_with_packages(monkeypatch, capsys):
    monkeypatch.setattr(gui_app.sys, "platform", "linux")
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")

    def fake_load(name):
        if name == "libxcb-cursor.so.0":
            raise OSError("not found")

    missing = gui_app.missing_xcb_libraries(fake_load)
    assert [m[0] for m in missing] == ["libxcb-cursor.so.0"]
    monkeypatch.setattr(gui_app, "missing_xcb_libraries", lambda load=None: missing)
    rc = gui_app.main([])
    err = capsys.readouterr().err
    assert rc != 0
    assert "apt-get install libxcb-cursor0" in err and "dnf install xcb-util-cursor" in err and "--batch" in err


def test_no_check_off_x11(monkeypatch):
    monkeypatch.setenv("QT_QPA_PLATFORM", "offscreen")
    assert gui_app.missing_xcb_libraries(lambda name: (_ for _ in ()).throw(OSError())) == []
    monkeypatch.setenv("QT_QPA_PLATFORM", "wayland")
    assert gui_app.missing_xcb_libraries(lambda name: (_ for _ in ()).throw(OSError())) == []
