"""Explanations say what they explain: Grad-CAM of the malignancy score by default (another target can be chosen),
the caption names it, a map lying off the lesion says so, and the legend goes with the map."""

import numpy as np

from tests.gui.conftest import lesion_image, wait_all_scored


def test_gradcam_explains_the_malignancy_score_by_default(qtbot, window, tmp_path):
    (case,) = window.add_paths([lesion_image(tmp_path / "g.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    assert case.prediction.cam_target == "malignancy"
    assert view.cam_caption.text().startswith("Grad-CAM for the malignancy score")
    window.settings.cam_target = "nv"  # another class: the case on screen is explained again
    qtbot.waitUntil(lambda: case.prediction.cam_target == "nv" and case.status == "done", timeout=10_000)
    assert view.cam_caption.text().startswith("Grad-CAM for") and "nevus" in view.cam_caption.text().lower()


def test_legend_hidden_with_the_map(qtbot, window, tmp_path):
    window.add_paths([lesion_image(tmp_path / "h.jpg")])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    assert view.legend.isVisible() and view.cam_caption.isVisible()
    window.act_overlay.trigger()
    assert not view.legend.isVisible() and not view.cam_caption.isVisible()
    window.act_overlay.trigger()
    assert view.legend.isVisible()


def test_a_map_off_the_lesion_says_so(qtbot, window, tmp_path):
    from PIL import Image

    # a masked crop: a lesion in the middle, black all around (as PAD-UFES-20's crops)
    img = np.zeros((300, 300, 3), np.uint8)
    yy, xx = np.mgrid[0:300, 0:300]
    img[(yy - 150) ** 2 + (xx - 150) ** 2 < 60 ** 2] = (150, 100, 90)
    Image.fromarray(img).save(tmp_path / "masked.png")
    (case,) = window.add_paths([tmp_path / "masked.png"])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    h, w = case.x.shape[:2]
    corner = np.zeros((8, 8), np.float32)
    corner[0, 0] = 1.0  # all the mass in one corner: on the black background
    assert "black background" in view.outside_note(case, corner)
    view._show_overlay(case)
    assert view.cam_caption.text().startswith("Grad-CAM for the malignancy score")
    centre = np.zeros((8, 8), np.float32)
    centre[3:5, 3:5] = 1.0
    assert view.outside_note(case, centre) == ""
