"""The heat map after a metadata change: recomputed for the new metadata; while that runs, or when it failed, the
map and score say they predate the change (with a "recompute" link that works); an all-zero map says it is flat."""

from __future__ import annotations

import dataclasses

import numpy as np

from mendicant_desktop.core.metadata import Metadata
from tests.gui.conftest import lesion_image, wait_all_scored


def _edit_age(view, age: int) -> None:
    view.age.setValue(age)


def test_the_map_is_recomputed_for_the_new_metadata(qtbot, window, tmp_path):
    (case,) = window.add_paths([lesion_image(tmp_path / "m.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    before = case.prediction
    assert before.cam is not None and not case.result_is_stale
    _edit_age(view, 85)
    qtbot.waitUntil(lambda: case.status == "done" and case.prediction is not before, timeout=10_000)
    assert case.scored_metadata == case.metadata == Metadata(age=85)
    assert case.prediction.cam is not None and case.prediction.cam is not before.cam  # a new map, not the old one
    direct = window.services.engine.predict_preprocessed(case.x[None], [case.metadata], cam=True,
                                                         cam_target="malignancy")[0]
    np.testing.assert_allclose(case.prediction.cam, direct.cam, atol=1e-5)
    assert view.cam_caption.text().startswith("Grad-CAM for the malignancy score")
    assert "before the metadata change" not in view.cam_caption.text()


def test_a_failed_rescore_says_the_map_predates_the_change_and_recompute_works(qtbot, window, tmp_path, monkeypatch):
    import mendicant_desktop.gui.assess_tab as at

    (case,) = window.add_paths([lesion_image(tmp_path / "f.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    real = at.rescore

    def broken(*a, **k):
        raise RuntimeError("engine busy")

    monkeypatch.setattr(at, "rescore", broken)
    before = case.prediction
    _edit_age(view, 30)
    qtbot.waitUntil(lambda: case.status == "done" and "before the metadata change" in view.cam_caption.text(),
                    timeout=10_000)
    assert case.prediction is before and case.result_is_stale
    assert "recompute" in view.cam_caption.text()
    assert "Computed before the metadata change" in view.summary.text()
    monkeypatch.setattr(at, "rescore", real)
    view.cam_caption.linkActivated.emit("recompute")  # the user clicks "recompute"
    qtbot.waitUntil(lambda: case.prediction is not before and case.status == "done", timeout=10_000)
    assert not case.result_is_stale and case.scored_metadata == Metadata(age=30)
    assert "before the metadata change" not in view.cam_caption.text()
    assert "before the metadata change" not in view.summary.text()


def test_while_rescoring_the_old_map_says_it_is_being_updated(qtbot, window, tmp_path):
    (case,) = window.add_paths([lesion_image(tmp_path / "u.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    case.metadata = Metadata(age=60)  # as set_metadata does before the re-score comes back
    case.status = "scoring"
    view.show_case(case, image_changed=False)
    assert view.cam_caption.text() == "⚠ Map and score computed before the metadata change · updating…"


def test_an_all_zero_map_is_called_flat_not_drawn(qtbot, window, tmp_path):
    (case,) = window.add_paths([lesion_image(tmp_path / "z.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    case.prediction = dataclasses.replace(case.prediction, cam=np.zeros_like(case.prediction.cam))
    view.show_case(case, image_changed=False)
    assert view.cam_caption.text() == "Grad-CAM for the malignancy score · flat: no region raises it"
    assert not view.view.overlay_visible()
