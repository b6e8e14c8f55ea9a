"""'Detailed explanation' (occlusion sensitivity) in the case view: run, show, switch, cancel, invalidate."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import Qt

from mendicant_desktop.core.metadata import Metadata
from tests.gui.conftest import drop_files, lesion_image, wait_all_scored


def _scored_cases(qtbot, window, tmp_path, n: int = 1):
    paths = [lesion_image(tmp_path / f"lesion {i}.jpg", seed=i) for i in range(n)]
    drop_files(qtbot, window, paths)
    wait_all_scored(qtbot, window)
    return window.assess.model.cases


def test_detailed_explanation_runs_stores_and_shows(qtbot, window, tmp_path):
    tab, view = window.assess, window.assess.view
    tab.occlusion_params = {"patch": 64, "stride": 64, "batch_size": 4}  # 16 + 1 passes: fast
    case, other = _scored_cases(qtbot, window, tmp_path, 2)
    tab.select_case(case)
    assert view.btn_explain.isVisible() and view.btn_explain.isEnabled()
    assert window.act_explain.isEnabled()
    assert "several seconds" in view.btn_explain.toolTip()
    assert view.overlay_mode == "Grad-CAM" and not view.mode.isEnabled()  # no occlusion map yet
    seen: list[tuple[int, int]] = []
    qtbot.mouseClick(view.btn_explain, Qt.MouseButton.LeftButton)
    assert case.occlusion_progress is not None  # the UI shows progress + Cancel meanwhile
    assert view.explain_bar.isVisible() and view.btn_explain_cancel.isVisible()
    assert not view.btn_explain.isVisible()
    view.explain_bar.valueChanged.connect(lambda v: seen.append((v, view.explain_bar.maximum())))
    qtbot.waitUntil(lambda: case.occlusion is not None, timeout=30_000)
    assert case.occlusion_progress is None and not tab.explaining(case)
    heat = case.occlusion
    assert heat.shape == case.x.shape[:2] and heat.dtype == np.float32
    assert 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0
    assert "17 passes" in case.occlusion_info
    assert seen and seen[-1][1] == 17
    # shown at once: mode switched, overlay is the occlusion map, caption says so
    assert view.overlay_mode == "Occlusion" and view.mode.isEnabled()
    assert np.array_equal(view.view._cam, heat)
    assert "Occlusion" in view.cam_caption.text() and "17 passes" in view.cam_caption.toolTip()
    assert not view.explain_bar.isVisible() and view.btn_explain.isVisible()
    # the existing overlay controls apply to it; switching back shows Grad-CAM
    view.colormap.setCurrentText("viridis" if view.colormap.findText("viridis") >= 0 else view.colormap.itemText(0))
    view.mode.setCurrentText("Grad-CAM")
    assert np.array_equal(view.view._cam, np.asarray(case.prediction.cam, np.float32))
    assert "Grad-CAM" in view.cam_caption.text()
    view.set_mode("Occlusion")
    # another case has none: Grad-CAM, mode disabled; re-selecting the first shows its map again
    tab.select_case(other)
    assert other.occlusion is None and view.overlay_mode == "Grad-CAM" and not view.mode.isEnabled()
    tab.select_case(case)
    assert view.overlay_mode == "Occlusion" and np.array_equal(view.view._cam, heat)
    # a metadata change re-scores the case and drops the map
    tab.set_metadata(case, Metadata(age=61, sex="female", site="trunk"))
    assert case.occlusion is None
    qtbot.waitUntil(lambda: case.status == "done", timeout=30_000)
    assert view.overlay_mode == "Grad-CAM" and not view.mode.isEnabled()


def test_detailed_explanation_cancel(qtbot, window, tmp_path):
    tab, view = window.assess, window.assess.view
    tab.occlusion_params = {"patch": 4, "stride": 4, "batch_size": 2}  # ~4000 passes: long enough to cancel
    (case,) = _scored_cases(qtbot, window, tmp_path, 1)
    window.act_explain.trigger()
    assert tab.explaining(case) and view.btn_explain_cancel.isVisible()
    qtbot.waitUntil(lambda: (case.occlusion_progress or (0, 0))[0] > 0, timeout=30_000)  # it has started
    qtbot.mouseClick(view.btn_explain_cancel, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not tab.explaining(case), timeout=30_000)
    assert case.occlusion is None and case.occlusion_progress is None
    assert view.btn_explain.isVisible() and view.btn_explain.isEnabled()
    assert not view.explain_bar.isVisible() and not view.btn_explain_cancel.isVisible()
    assert view.overlay_mode == "Grad-CAM"
    # the UI is still usable: another run can start and a metadata edit re-scores
    tab.occlusion_params = {"patch": 127, "stride": 127, "batch_size": 4}
    tab.explain_case(case)
    qtbot.waitUntil(lambda: case.occlusion is not None, timeout=30_000)
    assert view.overlay_mode == "Occlusion"


def test_detailed_explanation_disabled_for_errors(qtbot, window, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    drop_files(qtbot, window, [bad])
    wait_all_scored(qtbot, window)
    (case,) = window.assess.model.cases
    assert case.status == "error"
    assert not window.assess.view.explain_row.isVisible()
    assert not window.act_explain.isEnabled()
    assert window.assess.explain_case(case) is None
