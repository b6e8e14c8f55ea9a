"""Low-quality warnings added for exposure and tiny lesions; the batch row carries them like the GUI."""

import numpy as np
from PIL import Image

from mendicant_desktop.app.assessment import assess
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.quality import image_warnings
from tests.support.synthetic import skin, spot


def test_a_normal_photo_has_none_of_them():
    w = image_warnings(spot(skin(), 90))
    assert not any(k in x for x in w for k in ("Overexposed", "Underexposed", "Tiny lesion"))


def test_overexposed():
    img = spot(skin(), 90)
    img[:, : img.shape[1] // 2] = 255
    assert any(x.startswith("Overexposed: 5") for x in image_warnings(img))


def test_underexposed():
    img = (spot(skin(), 90).astype(np.float32) * 0.18).astype(np.uint8)  # dark, not black
    assert any(x.startswith("Underexposed") for x in image_warnings(img))


def test_tiny_lesion():
    w = image_warnings(spot(skin(), 18))  # ~0.3% of the photo
    assert any(x.startswith("Tiny lesion: it covers only") for x in w), w


def test_the_row_carries_them(tiny_bundle, tmp_path):
    img = spot(skin(), 90)
    img[:, : img.shape[1] // 2] = 255
    Image.fromarray(img).save(tmp_path / "bright.png")
    a = assess(load_engine(tiny_bundle, threads=1), tmp_path / "bright.png")
    assert "Overexposed" in a.row()["warnings"]
