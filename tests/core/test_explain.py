"""core.explain: saliency-in-lesion ratio, per-group summaries and occlusion sensitivity.

Mechanics run on the tiny random model; the claim that occlusion ranks the lesion above the background on
real dermoscopy needs the bundled model and ../shared/data (skips with a reason otherwise).
"""

from __future__ import annotations

import csv
import math
import threading

import numpy as np
import pytest

from mendicant_desktop.core.bundle import ModelBundle
from mendicant_desktop.core.errors import CancelledError
from mendicant_desktop.core.explain import (
    OcclusionSensitivity,
    SaliencyInLesion,
    lesion_mask,
    lesion_masks,
    mean_cam,
    occlusion_positions,
    region_ranking,
    saliency_in_lesion,
    summarize_saliency,
)
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata, encode_metadata
from mendicant_desktop.core.preprocess import load_image, preprocess
from mendicant_desktop.core.results import MALIGNANT_CLASSES


@pytest.fixture(scope="module")
def tiny_engine(tiny_bundle) -> Engine:
    return Engine(ModelBundle.load(tiny_bundle), threads=1)


def skin_with_lesion(size: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A skin-coloured image with a dark round lesion; returns (rgb, true lesion mask)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    lesion = np.hypot(yy - size * 0.45, xx - size * 0.55) < size * 0.2
    img = np.empty((size, size, 3), np.float32)
    img[:] = (215, 170, 140)
    img[lesion] = (95, 60, 45)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), lesion


# --------------------------------------------------------------------------------------------------
# Saliency-in-lesion
# --------------------------------------------------------------------------------------------------


def test_lesion_mask_dermoscopy_like_and_masked_crop():
    rgb, truth = skin_with_lesion()
    mask, kind = lesion_mask(rgb)
    assert kind == "lesion-split" and mask.shape == truth.shape
    iou = (mask & truth).sum() / (mask | truth).sum()
    assert iou > 0.8
    crop = rgb.copy()
    crop[~truth] = 0  # PAD-style: everything but the lesion multiplied by zero
    mask2, kind2 = lesion_mask(crop)
    assert kind2 == "masked-crop"
    assert ((mask2 & truth).sum() / (mask2 | truth).sum()) > 0.95


def test_saliency_in_lesion_ratio():
    rgb, truth = skin_with_lesion(256)
    on = np.zeros((8, 8), np.float32)
    on[2:5, 3:6] = 1.0  # over the lesion centre
    r = saliency_in_lesion(on, rgb)
    assert r.ok and r.ratio > 0.7 > 5 * r.lesion_fraction and r.mask_kind == "lesion-split"
    off = np.zeros((8, 8), np.float32)
    off[7, 0] = 1.0  # a corner
    assert saliency_in_lesion(off, mask=truth).ratio < 0.05
    uniform = saliency_in_lesion(np.ones((8, 8), np.float32), mask=truth)
    assert uniform.ratio == pytest.approx(truth.mean(), abs=1e-6)  # chance level = lesion area share
    assert uniform.lesion_fraction == pytest.approx(truth.mean())
    empty = saliency_in_lesion(np.zeros((8, 8), np.float32), mask=truth)
    assert empty.ratio is None and "empty" in empty.reason
    assert saliency_in_lesion(on, mask=np.zeros_like(truth)).ratio is None
    assert saliency_in_lesion(None, mask=truth).reason == "no saliency map"
    with pytest.raises(ValueError):
        saliency_in_lesion(on)


def test_summarize_saliency_groups_and_mean_cam():
    items = [SaliencyInLesion(v, 0.2, "masked-crop") for v in (0.1, 0.3, 0.5, 0.7)]
    items.append(SaliencyInLesion(None, 0.0, "lesion-split", "no lesion found in the image"))
    groups = ["II", "II", "IV", "IV", "IV"]
    cams = [np.full((8, 8), v, np.float32) for v in (0.0, 1.0, 0.5, 0.5, 1.0)]
    s = summarize_saliency(items, groups, cams)
    assert list(s) == ["II", "IV", "overall"]
    assert s["II"].n == 2 and s["II"].mean == pytest.approx(0.2) and s["II"].median == pytest.approx(0.2)
    assert s["IV"].n_images == 3 and s["IV"].n == 2 and s["IV"].mask_kinds == {"masked-crop": 2, "lesion-split": 1}
    assert s["overall"].n == 4 and sum(s["overall"].hist) == 4
    assert s["II"].lift == pytest.approx(1.0)
    assert np.allclose(s["II"].mean_cam, 0.5) and np.allclose(s["IV"].mean_cam, 2 / 3)
    d = s["IV"].to_dict()
    assert d["n"] == 2 and len(d["hist"]) == 10 and d["mask_kinds"]["lesion-split"] == 1
    assert mean_cam([]) is None
    assert mean_cam([np.ones((8, 8)), np.zeros((4, 4))], size=(16, 16)).shape == (16, 16)


# --------------------------------------------------------------------------------------------------
# Occlusion mechanics (tiny model)
# --------------------------------------------------------------------------------------------------


def test_occlusion_positions_cover_the_edges():
    assert occlusion_positions(254, 32, 16) == [*range(0, 209, 16), 222]
    assert occlusion_positions(254, 64, 64) == [0, 64, 128, 190]
    assert occlusion_positions(20, 32, 16) == [0]
    with pytest.raises(ValueError):
        occlusion_positions(254, 0, 1)


def test_occlusion_shape_values_and_progress(tiny_engine):
    rgb, _ = skin_with_lesion(300)
    occ = OcclusionSensitivity(tiny_engine, patch=64, stride=64, batch_size=5)
    calls: list[tuple[int, int]] = []
    res = occ.explain(rgb, Metadata(age=50, sex="male", site="trunk"), progress=lambda d, t: calls.append((d, t)))
    assert res.heatmap.shape == (254, 254) and res.heatmap.dtype == np.float32
    assert res.grid.shape == (4, 4) and res.ys == (0, 64, 128, 190)
    assert res.n_passes == occ.n_passes() == 17 and res.target == "malignancy"
    assert calls[0] == (1, 17) and calls[-1] == (17, 17)
    assert all(b[0] > a[0] for a, b in zip(calls, calls[1:]))
    # Recompute one patch by hand: drop = base - score(occluded), fill = the image's mean colour.
    x = preprocess(rgb)
    meta = encode_metadata(Metadata(age=50, sex="male", site="trunk"))[None]
    idx = [tiny_engine.class_names.index(c) for c in MALIGNANT_CLASSES]
    base = tiny_engine.run(x[None], meta)[0][0, idx].sum()
    assert res.base_score == pytest.approx(float(base), abs=1e-6)
    xo = x.copy()
    xo[64:128, 128:192] = x.reshape(-1, 3).mean(axis=0)
    drop = base - tiny_engine.run(xo[None], meta)[0][0, idx].sum()
    assert res.grid[1, 2] == pytest.approx(float(drop), abs=1e-5)
    assert res.heatmap[100, 150] == pytest.approx(float(drop), abs=1e-5)  # covered by that patch only
    assert res.magnitude[100, 150] == pytest.approx(abs(float(drop)), abs=1e-5)
    assert np.all(res.magnitude >= np.abs(res.heatmap) - 1e-6)
    for kind in ("drop", "magnitude"):
        norm = res.normalized(kind)
        assert norm.min() >= 0 and norm.max() <= 1


def test_occlusion_targets_and_preprocessed_input(tiny_engine):
    rgb, _ = skin_with_lesion(254)
    occ = OcclusionSensitivity(tiny_engine, patch=127, stride=127, baseline=0.0)
    a = occ(preprocess(rgb), target="mel")
    b = occ(rgb, target="mel")
    assert a.target == "mel" and np.allclose(a.heatmap, b.heatmap)
    top = occ(rgb, target="top")
    assert top.target in tiny_engine.class_names
    with pytest.raises(ValueError, match="unknown occlusion target"):
        occ(rgb, target="xyz")
    with pytest.raises(ValueError):
        OcclusionSensitivity(tiny_engine, patch=16, stride=32)


def test_occlusion_cancel(tiny_engine):
    rgb, _ = skin_with_lesion(254)
    occ = OcclusionSensitivity(tiny_engine, patch=32, stride=16, batch_size=8)
    ev = threading.Event()
    ev.set()
    with pytest.raises(CancelledError):
        occ.explain(rgb, cancel=ev)
    seen: list[int] = []

    def progress(done: int, total: int) -> None:
        seen.append(done)

    with pytest.raises(CancelledError):
        occ.explain(rgb, progress=progress, cancel=lambda: len(seen) >= 3)
    assert len(seen) == 3 and seen[-1] < occ.n_passes()  # stopped early, not after all 226 passes


def test_region_ranking():
    mask = np.zeros((10, 10), bool)
    mask[3:6, 3:6] = True
    heat = np.zeros((10, 10), np.float32)
    heat[mask] = 1.0
    assert region_ranking(heat, mask) == pytest.approx(1.0)
    assert region_ranking(-heat, mask) < 0
    assert math.isnan(region_ranking(heat, np.ones((10, 10), bool)))
    assert region_ranking(np.kron(heat, np.ones((2, 2))), mask) > 0.5  # resized to the mask


# --------------------------------------------------------------------------------------------------
# Real model, real dermoscopy
# --------------------------------------------------------------------------------------------------

N_REAL = 16


def test_occlusion_ranks_lesion_above_background_on_real_dermoscopy(bundled_card, shared_data):
    """Occlusion sensitivity is higher on the lesion than on the surrounding skin, more often than chance.

    Real ISIC dermoscopy (MEL and NV of the ``external`` pool, never seen in training), the app's target
    (the malignancy score) and the sensitivity map (mean |change of the score| when a region is hidden).
    Per image: is the map's mean inside the lesion mask above its mean over the rest (the dermoscope's black
    vignette excluded)? If the map ignored where the lesion is, that would be a coin flip; a one-sided
    binomial test must give p < 0.05 (>= 12 of 16). Coarse settings (patch 64, stride 48: 26 passes per
    image) keep the test near 1 s per image on a free core.
    """
    engine = Engine(ModelBundle.load(bundled_card), threads=2)
    with open(shared_data / "isic_dermoscopy" / "labels.csv", newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["pool"] == "external" and r["dx"] in ("MEL", "NV")]
    rng = np.random.default_rng(7)
    rows = [rows[i] for i in rng.permutation(len(rows))]
    occ = OcclusionSensitivity(engine, patch=64, stride=48, batch_size=13)
    wins, used, details = 0, 0, []
    for r in rows:
        if used == N_REAL:
            break
        x = preprocess(load_image(shared_data / "isic_dermoscopy" / "images" / r["image"]))
        lesion, vignette, kind = lesion_masks(x)
        if kind != "lesion-split" or not (0.03 < lesion.mean() < 0.7):
            continue  # no usable lesion/skin split on this image
        res = occ.explain(x, target="malignancy")
        d = region_ranking(res.magnitude, lesion, exclude=vignette)
        used += 1
        wins += int(d > 0)
        details.append(f"{r['image']}:{d:+.4f}")
    assert used == N_REAL
    p = sum(math.comb(N_REAL, k) for k in range(wins, N_REAL + 1)) / 2**N_REAL
    assert p < 0.05, f"lesion above background on {wins}/{N_REAL} images (p={p:.3f}): {details}"
