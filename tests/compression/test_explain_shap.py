"""compression.explain_shap on a tiny random Xception-shaped ReferenceNet (no weights, no data needed)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("captum")

from compression import explain_shap as es  # noqa: E402
from compression.reference import ReferenceNet, XceptionWidths  # noqa: E402
from mendicant_desktop.core.metadata import Metadata, encode_metadata  # noqa: E402


@pytest.fixture(scope="module")
def tiny_net() -> ReferenceNet:
    torch.manual_seed(0)
    before = torch.get_num_threads()
    torch.set_num_threads(min(2, before))
    net = ReferenceNet(XceptionWidths().scaled(1 / 32, n_middle=1)).eval()
    yield net
    torch.set_num_threads(before)


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:254, 0:254]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(70, 180, 2)
        blob = np.hypot(yy - cy, xx - cx) < rng.uniform(25, 60)
        img = np.empty((254, 254, 3), np.float32)
        img[:] = rng.uniform(150, 230, 3)
        img[blob] = rng.uniform(40, 110, 3)
        out.append(np.clip(img + rng.normal(0, 5, img.shape), 0, 255))
    return np.stack(out).astype(np.float32)


def test_spearman_and_ranks_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 6, 64).astype(float)  # many ties
    b = rng.normal(size=64)
    assert np.allclose(es.rankdata(a), stats.rankdata(a))
    assert es.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert es.spearman(b, 2 * b + 1) == pytest.approx(1.0)
    assert math.isnan(es.spearman(np.ones(5), b[:5]))


def test_pool_to_grid_matches_adaptive_avg_pool():
    x = np.random.default_rng(2).normal(size=(3, 254, 254))
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x)[:, None], (8, 8))[:, 0].numpy()
    assert np.allclose(es.pool_to_grid(x, (8, 8)), ref)


def test_gradcam_maps_equal_torch_autograd_gradcam(tiny_net):
    """The numpy runtime Grad-CAM on the torch features equals Grad-CAM by autograd on the torch model."""
    x = _images(2)
    meta = np.stack([encode_metadata(Metadata(age=60, sex="male", site="trunk")), encode_metadata(None)])
    cams = es.gradcam_maps(tiny_net, x, meta)
    xt = torch.from_numpy(x)
    feats = tiny_net.features(xt).detach().requires_grad_(True)
    probs = torch.softmax(tiny_net.head(feats.mean(dim=(2, 3)), torch.from_numpy(meta)), dim=1)
    probs[:, list(es.MALIGNANT_IDX)].sum().backward()
    w = feats.grad.mean(dim=(2, 3))
    cam = torch.relu((w[:, :, None, None] * feats).sum(dim=1)).detach().numpy()
    cam = cam / np.maximum(cam.reshape(2, -1).max(axis=1), 1e-30)[:, None, None]
    assert cams.shape == cam.shape == (2, 8, 8)
    assert np.allclose(cams, cam, atol=1e-4)


def test_compare_end_to_end(tiny_net, tmp_path):
    x = _images(3, seed=3)
    samples = [es.Sample(f"img{i}.jpg", g, "label", x[i], encode_metadata(None))
               for i, g in enumerate(["II", "II", "IV"])]
    res = es.compare(tiny_net, samples, n_samples=2, stdevs=5.0)
    assert res.grid == (8, 8)
    assert set(res.groups) == {"II", "IV"} and res.groups["II"].n == 2 and res.overall.n == 3
    for row in res.per_image:
        assert row["rho"] is None or -1.0 <= row["rho"] <= 1.0
    d = res.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["groups"]["IV"]["n"] == 1 and len(d["images"]) == 3
    md = es.to_markdown(res)
    assert "| II | 2 |" in md and "GradientSHAP" in md
    attr = es.gradient_shap_maps(tiny_net, x[:1], encode_metadata(None)[None], n_samples=2)
    assert attr.shape == (1, 254, 254) and np.isfinite(attr).all()
