"""The first window size fits the screen's available geometry; the last size is restored."""

from mendicant_desktop.gui.app import build_window, create_app


def test_first_size_fits_the_screen_and_the_last_is_restored(qtbot, settings_path, tiny_bundle):
    app = create_app()
    avail = app.primaryScreen().availableGeometry()  # offscreen: 800x800, smaller than the preferred 1280x800
    services, win = build_window(settings_path, tiny_bundle, load=False)
    qtbot.addWidget(win)
    assert win.width() <= avail.width() and win.height() <= avail.height()
    assert win.width() < 1280  # shrunk to the screen, not the fixed 1280x800 of before
    first = (win.width(), win.height())
    win.show()
    win.resize(win.width(), 700)
    last = (win.width(), win.height())
    assert last != first
    win.close()
    services2, win2 = build_window(settings_path, tiny_bundle, load=False)
    qtbot.addWidget(win2)
    assert (win2.width(), win2.height()) == last
