"""ITA skin-tone estimate: CIELAB against scikit-image, band edges, unknown on masked crops, real data."""

from __future__ import annotations

import numpy as np
import pytest

from mendicant_desktop.core.preprocess import load_image
from mendicant_desktop.core.skintone import (
    FST_TYPES,
    estimate_skin_tone,
    ita_to_fst,
    otsu_threshold,
    srgb_to_lab,
)
from tests.conftest import read_labels


def test_lab_matches_scikit_image():
    skcolor = pytest.importorskip("skimage.color")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3)).astype(np.uint8)
    ours = srgb_to_lab(rgb)
    ref = skcolor.rgb2lab(rgb)
    assert np.abs(ours - ref).max() < 0.05
    # Every 8-bit grey level, including the linear segment near black.
    grey = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)[None]
    assert np.abs(srgb_to_lab(grey) - skcolor.rgb2lab(grey)).max() < 0.05


@pytest.mark.parametrize(
    "ita,fst", [(70, "I"), (55.01, "I"), (55, "II"), (41.01, "II"), (41, "III"), (28.5, "III"), (28, "IV"),
                (10.5, "IV"), (10, "V"), (-29.9, "V"), (-30, "VI"), (-60, "VI")],
)
def test_ita_bands(ita, fst):
    assert ita_to_fst(ita) == fst


def test_otsu_separates_two_modes():
    v = np.concatenate([np.full(500, 20.0), np.full(300, 80.0)])
    t = otsu_threshold(v + np.random.default_rng(0).normal(0, 2, v.size))
    assert 25 < t < 75


def _lab_to_srgb(L: float, a: float, b: float) -> np.ndarray:
    """Inverse of srgb_to_lab for one colour (for building test images of known ITA)."""
    fy = (L + 16) / 116
    fx, fz = fy + a / 500, fy - b / 200
    d = 6 / 29

    def finv(t: float) -> float:
        return t**3 if t > d else 3 * d * d * (t - 4 / 29)

    xyz = np.array([finv(fx) * 0.95047, finv(fy), finv(fz) * 1.08883])
    m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
    lin = np.linalg.solve(m, xyz)
    srgb = np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.clip(lin, 0, None) ** (1 / 2.4) - 0.055)
    return np.clip(np.round(srgb * 255), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("L,b,expected", [(75, 12, "I"), (65, 15, "II"), (62, 16, "III"), (55, 18, "IV"),
                                          (40, 20, "V"), (25, 15, "VI")])
def test_synthetic_skin_with_central_lesion(L, b, expected):
    skin = _lab_to_srgb(L, 10, b)
    img = np.tile(skin, (200, 200, 1))
    yy, xx = np.mgrid[0:200, 0:200]
    lesion = (yy - 100) ** 2 + (xx - 100) ** 2 < 45**2
    img[lesion] = (max(0, int(skin[0]) - 60), max(0, int(skin[1]) - 60), max(0, int(skin[2]) - 50))
    est = estimate_skin_tone(img)
    assert est.estimated and est.known
    assert est.fst == expected, (est.ita, est.fst)
    assert est.skin_fraction > 0.8


def test_masked_crop_is_unknown_with_reason():
    img = np.zeros((200, 200, 3), np.uint8)
    yy, xx = np.mgrid[0:200, 0:200]
    img[(yy - 100) ** 2 + (xx - 100) ** 2 < 90**2] = (150, 100, 80)  # lesion on black, like PAD crops
    est = estimate_skin_tone(img)
    assert est.fst == "unknown" and est.ita is None
    assert "black" in est.reason and "skin" in est.reason


def test_too_little_skin_is_unknown():
    # Lesion filling the frame: the border ring is lesion-coloured, not skin (b* < 0 purple-grey).
    img = np.tile(np.array([90, 90, 120], np.uint8), (100, 100, 1))
    est = estimate_skin_tone(img)
    assert est.fst == "unknown" and "too little skin" in est.reason


def test_rejects_non_rgb():
    with pytest.raises(ValueError):
        estimate_skin_tone(np.zeros((10, 10), np.uint8))


def test_real_pad_crops_are_unknown(shared_data):
    rows = read_labels(shared_data, "pad_ufes20_clinical")[:60]
    results = [estimate_skin_tone(load_image(shared_data / "pad_ufes20_clinical" / "images" / r["image"]))
               for r in rows]
    unknown = sum(not e.known for e in results)
    assert unknown / len(results) >= 0.95


def test_real_dermoscopy_mostly_estimated(shared_data):
    rows = read_labels(shared_data, "isic_dermoscopy")[::40]
    results = [estimate_skin_tone(load_image(shared_data / "isic_dermoscopy" / "images" / r["image"]))
               for r in rows]
    known = [e for e in results if e.known]
    assert len(known) / len(results) >= 0.6
    assert all(e.fst in FST_TYPES and e.ita is not None for e in known)
