"""Low-quality warnings added for exposure and tiny lesions; the batch row carries them like the GUI."""

import numpy as np
from PIL import Image

from mendicant_desktop.app.assessment import assess
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.quality import image_warnings


def _skin(h=480, w=640, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.array([215, 170, 145], np.float32) + rng.normal(0, 8, (h, w, 3)), 0, 255)


def _spot(img, r):
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    img[(yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r * r] = (80, 50, 40)
    return img.astype(np.uint8)


def test_a_normal_photo_has_none_of_them():
    w = image_warnings(_spot(_skin(), 90))
    assert not any(k in x for x in w for k in ("Overexposed", "Underexposed", "Tiny lesion"))


def test_overexposed():
    img = _spot(_skin(), 90)
    img[:, : img.shape[1] // 2] = 255
    assert any(x.startswith("Overexposed: 5") for x in image_warnings(img))


def test_underexposed():
    img = (_spot(_skin(), 90).astype(np.float32) * 0.18).astype(np.uint8)  # dark, not black
    assert any(x.startswith("Underexposed") for x in image_warnings(img))


def test_tiny_lesion():
    w = image_warnings(_spot(_skin(), 18))  # ~0.3% of the photo
    assert any(x.startswith("Tiny lesion: it covers only") for x in w), w


def test_the_row_carries_them(tiny_bundle, tmp_path):
    img = _spot(_skin(), 90)
    img[:, : img.shape[1] // 2] = 255
    Image.fromarray(img).save(tmp_path / "bright.png")
    a = assess(load_engine(tiny_bundle, threads=1), tmp_path / "bright.png")
    assert "Overexposed" in a.row()["warnings"]
