"""The Assess view and the Audit tab at 1024x640 (and 1366x768): long names end in "…" with the full name in the
tooltip, the skin-type card is in view without scrolling, the audit table needs no sideways scrolling and the
plots are not cut off."""

from __future__ import annotations

import pytest

from tests.gui.conftest import lesion_image, wait_all_scored

SIZES = ((1024, 640), (1366, 768))


def _settle(qtbot):
    from PySide6.QtWidgets import QApplication

    for _ in range(5):
        QApplication.processEvents()
        qtbot.wait(20)


@pytest.mark.parametrize("size", SIZES)
def test_assess_view_fits(qtbot, window, tmp_path, size):
    name = "a-very-long-clinical-photo-file-name-from-the-camera-0123456789abcdef.jpg"
    (case,) = window.add_paths([lesion_image(tmp_path / name)])
    wait_all_scored(qtbot, window)
    window.resize(*size)
    _settle(qtbot)
    view = window.assess.view
    title = view.title
    assert title.full_text() == name and title.toolTip().splitlines()[0] == name
    fm = title.fontMetrics()
    if fm.horizontalAdvance(name) > title.contentsRect().width():
        assert title.text().endswith("…") and name.startswith(title.text()[:-1])
    assert fm.horizontalAdvance(title.text()) <= title.contentsRect().width()
    # the skin-type card is inside the right column's visible part, without scrolling
    scroll = view.skin_card.parentWidget().parentWidget().parentWidget()  # panel -> viewport -> scroll area
    vp = scroll.viewport()
    top = view.skin_card.mapTo(vp, view.skin_card.rect().topLeft()).y()
    assert scroll.verticalScrollBar().value() == 0
    assert 0 <= top and top + view.skin_card.height() <= vp.height(), (top, view.skin_card.height(), vp.height())


@pytest.mark.parametrize("size", SIZES)
def test_audit_tab_fits(qtbot, window, shared_data, tmp_path, size):
    from tests.gui.test_audit_tab import _pad_labels

    labels, _n = _pad_labels(shared_data, tmp_path)
    window.resize(*size)
    tab = window.audit
    window.tabs.setCurrentWidget(tab)
    _settle(qtbot)
    assert tab.table.horizontalScrollBar().maximum() == 0  # the empty table's headers fit too
    assert tab.table.horizontalHeader().length() <= tab.table.viewport().width()
    tab.set_inputs(labels, shared_data / "pad_ufes20_clinical" / "images", n_boot=20)
    done = []
    tab.finished.connect(done.append)
    tab.start()
    qtbot.waitUntil(lambda: bool(done), timeout=120_000)
    assert done[0] is not None
    _settle(qtbot)
    t = tab.table
    assert t.horizontalScrollBar().maximum() == 0  # every column in view
    assert t.horizontalHeader().length() <= t.viewport().width()
    assert t.verticalScrollBar().maximum() == 0  # every row in view
    for plot in (tab.roc, tab.cal):
        if plot.isVisibleTo(tab):  # stacked, or the current tab
            assert plot.height() >= plot.minimumHeight()
            bottom = plot.mapTo(tab, plot.rect().bottomLeft()).y()
            assert bottom <= tab.height()
    if size == (1024, 640):
        assert tab.plot_tabs.count() == 2  # too low for two stacked plots: one tab each
    for other in SIZES[::-1] + SIZES:  # resized after the run, both ways: still no sideways scrolling
        window.resize(*other)
        _settle(qtbot)
        assert t.horizontalScrollBar().maximum() == 0, other
        assert t.horizontalHeader().length() <= t.viewport().width(), other  # the columns' own widths too
