"""Image-quality warnings (numpy only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from mendicant_desktop.app.quality import domain_warnings, image_warnings, laplacian_variance


def _skin(h=300, w=400, seed=0):
    rng = np.random.default_rng(seed)
    img = np.array([212, 168, 144], np.float32) + rng.normal(0, 12, (h, w, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    inside = (((xx - w / 2) / (w * 0.2)) ** 2 + ((yy - h / 2) / (h * 0.25)) ** 2) < 1
    img[inside] = [95, 62, 48]
    return np.clip(img, 0, 255).astype(np.uint8)


def test_clean_image_has_no_warnings():
    assert image_warnings(_skin()) == []


def test_small_blurred_and_not_skin():
    small = _skin(90, 100)
    assert any("too small" in w for w in image_warnings(small))
    blurred = np.asarray(Image.fromarray(_skin()).filter(ImageFilter.GaussianBlur(6)))
    assert laplacian_variance(blurred) < laplacian_variance(_skin())
    assert any("blur" in w.lower() for w in image_warnings(blurred))
    green = np.zeros((300, 400, 3), np.uint8)
    green[...] = (40, 160, 60)
    assert any("Mostly not skin" in w for w in image_warnings(green))
    masked = np.zeros((300, 400, 3), np.uint8)
    masked[120:180, 170:230] = (120, 80, 60)
    warn = [w for w in image_warnings(masked) if "Mostly not skin" in w]
    assert warn and "black background" in warn[0]


def test_domain_check_only_when_card_defines_it():
    probs = (0.2, 0.15, 0.15, 0.1, 0.15, 0.15, 0.1)
    assert domain_warnings({}, probs) == []
    w = domain_warnings({"domain_check": {"min_top_probability": 0.5}}, probs)
    assert w and "training domain" in w[0]
    assert domain_warnings({"domain_check": {"max_entropy": 5.0}}, probs) == []
    assert domain_warnings({"domain_check": {"max_entropy": 1.0}}, probs)
