"""Engine records, exact head gradients, Grad-CAM shape/range and the overlay's input checks."""

from __future__ import annotations

import numpy as np
import pytest

from mendicant_desktop.core.bundle import ModelBundle
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata, encode_metadata
from mendicant_desktop.core.saliency import (
    COLORMAPS,
    GradCAM,
    GradCAMPlusPlus,
    colormap_lut,
    head_forward,
    overlay,
    probability_score_weights,
    score_gradients,
    softmax,
    upsample_cam,
)


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return Engine(ModelBundle.load(tiny_bundle), threads=1)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in ((180, 180), (300, 200), (40, 60))]


def test_predictions_are_consistent_records(engine, images):
    preds = engine.predict(images, [None, Metadata(age=60, sex="male", site="back"), None], top_k=3)
    assert len(preds) == 3
    for p in preds:
        assert len(p.probabilities) == 7 and abs(sum(p.probabilities) - 1) < 1e-5
        assert p.malignancy == pytest.approx(p.prob("mel") + p.prob("bcc") + p.prob("akiec"))
        assert p.risk == ("high" if p.malignancy >= p.threshold else "low")
        assert [c for c, _ in p.top_k] == sorted(p.class_names, key=lambda c: -p.prob(c))[:3]
        assert p.top_class == p.top_k[0][0] == p.cam_target
        assert p.cam is not None and p.cam.ndim == 2
        assert p.cam.min() >= 0 and p.cam.max() == pytest.approx(1.0)
        assert p.model_sha256 == engine.card.sha256
        with pytest.raises(AttributeError):
            p.malignancy = 0.0  # type: ignore[misc]


def test_batching_does_not_change_results(engine, images):
    one_by_one = [engine.predict(im)[0] for im in images]
    batched = engine.predict(images, batch_size=2)
    for a, b in zip(one_by_one, batched):
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-6)
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-5)


def test_metadata_changes_probabilities(engine, images):
    a = engine.predict(images[0])[0]
    b = engine.predict(images[0], Metadata(age=80, sex="female", site="head-or-neck"))[0]
    assert max(abs(x - y) for x, y in zip(a.probabilities, b.probabilities)) > 1e-4


def test_threshold_override(engine, images):
    p = engine.predict(images[0], threshold=0.0001)[0]
    assert p.threshold == 0.0001 and p.risk == "high"


def test_head_reproduces_onnx_probabilities(engine):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, 254, 254, 3)).astype(np.float32)
    meta = np.stack([encode_metadata(Metadata(age=a)) for a in (None, 20, 50, 90)])
    probs, feats = engine.run(x, meta)
    hp = head_forward(engine.bundle.head, feats.mean(axis=(2, 3)), meta)
    np.testing.assert_allclose(softmax(hp.logits), probs, atol=1e-5)


def test_score_gradients_match_finite_differences(engine):
    head = engine.bundle.head
    rng = np.random.default_rng(1)
    pooled = np.abs(rng.standard_normal((2, head["img_fc_w"].shape[0]))).astype(np.float64)
    meta = np.stack([encode_metadata(None), encode_metadata(Metadata(age=33, sex="f", site="arm"))]).astype(np.float64)
    head64 = {k: v.astype(np.float64) for k, v in head.items()}
    hp = head_forward(head64, pooled, meta)
    for target in range(7):
        w = np.zeros((2, 7))
        w[:, target] = 1.0
        g = score_gradients(head64, hp, w)
        eps = 1e-6
        for k in rng.choice(pooled.shape[1], 5, replace=False):
            d = np.zeros_like(pooled)
            d[:, k] = eps
            fd = (head_forward(head64, pooled + d, meta).logits[:, target]
                  - head_forward(head64, pooled - d, meta).logits[:, target]) / (2 * eps)
            np.testing.assert_allclose(g[:, k], fd, rtol=1e-4, atol=1e-7)


def test_probability_score_weights_match_finite_differences():
    rng = np.random.default_rng(2)
    z = rng.standard_normal((3, 7))
    w = probability_score_weights(softmax(z), [0, 1, 4])
    eps = 1e-6
    for j in range(7):
        d = np.zeros_like(z)
        d[:, j] = eps
        fd = (softmax(z + d)[:, [0, 1, 4]].sum(1) - softmax(z - d)[:, [0, 1, 4]].sum(1)) / (2 * eps)
        np.testing.assert_allclose(w[:, j], fd, atol=1e-8)


def test_malignancy_cam_target(engine, images):
    p = engine.predict(images[0], cam_target="malignancy")[0]
    assert p.cam_target == "malignancy" and p.cam.max() == pytest.approx(1.0)
    with pytest.raises(ValueError):
        engine.predict(images[0], cam_target="nonsense")


def test_cam_variants_shapes_and_range():
    rng = np.random.default_rng(4)
    feats = np.maximum(rng.standard_normal((2, 5, 8, 8)), 0).astype(np.float32)
    grads = rng.standard_normal((2, 5)).astype(np.float32)
    for cls in (GradCAM, GradCAMPlusPlus):
        cam = cls()(feats, grads)
        assert cam.shape == (2, 8, 8) and cam.min() >= 0 and cam.max() <= 1
    # With one channel and a positive gradient Grad-CAM is that channel's normalised activation.
    one = GradCAM()(feats[:, :1], np.ones((2, 1), np.float32))
    np.testing.assert_allclose(one[0], feats[0, 0] / feats[0, 0].max(), rtol=1e-6)
    with pytest.raises(ValueError):
        GradCAM()(feats, grads[:, :3])


def test_overlay_checks_inputs_and_blends():
    img = np.full((20, 30, 3), 100, np.uint8)
    heat = np.zeros((20, 30), np.float32)
    out0 = overlay(img, heat, alpha=0.0)
    np.testing.assert_array_equal(out0, img)
    full = overlay(img, np.ones((4, 6), np.float32), alpha=1.0, colormap="jet")
    np.testing.assert_array_equal(full[0, 0], colormap_lut("jet")[255])
    for bad_img, bad_heat, kw in [
        (img.astype(np.float32), heat, {}),
        (img[..., :2], heat, {}),
        (img, heat[None], {}),
        (img, heat + 2, {}),
        (img, np.full((20, 30), np.nan), {}),
        (img, heat, {"alpha": 1.5}),
        (img, heat, {"colormap": "rainbow-unicorn"}),
    ]:
        with pytest.raises(ValueError):
            overlay(bad_img, bad_heat, **kw)


def test_colormaps_and_upsample():
    for name in COLORMAPS:
        lut = colormap_lut(name)
        assert lut.shape == (256, 3) and lut.dtype == np.uint8
    cam = np.zeros((8, 8), np.float32)
    cam[3:5, 3:5] = 1
    up = upsample_cam(cam, (254, 254))
    assert up.shape == (254, 254) and 0 <= up.min() and up.max() <= 1
    assert up[127, 127] > up[10, 10]


def test_linear_head_gradients_and_cam_by_hand():
    """A linear head's d(logit)/d(pooled) is its weight column; Grad-CAM is then ReLU(sum_c w_c A_c) / max."""
    from mendicant_desktop.core.saliency import GradCAM, is_linear_head, linear_score_gradients

    head = {"linear_w_features": np.array([[1.0, 0.0, 2.0], [-1.0, 1.0, 0.5]], np.float32),
            "linear_b": np.zeros(3, np.float32)}
    assert is_linear_head(head) and not is_linear_head({"img_fc_w": np.zeros(1)})
    g = linear_score_gradients(head, np.array([[0.0, 0.0, 1.0]], np.float32))  # the third logit
    np.testing.assert_array_equal(g, [[2.0, 0.5]])
    feats = np.array([[[[1.0, 0.0], [0.0, 0.0]], [[0.0, 4.0], [0.0, 0.0]]]], np.float32)  # (1, 2, 2, 2)
    cam = GradCAM()(feats, g)
    # weights = g / (h*w) = [0.5, 0.125]; map = [[0.5, 0.5], [0, 0]] -> normalised [[1, 1], [0, 0]]
    np.testing.assert_allclose(cam[0], [[1.0, 1.0], [0.0, 0.0]], atol=1e-6)
    with pytest.raises(ValueError, match="logits"):
        linear_score_gradients(head, np.ones((1, 2), np.float32))
