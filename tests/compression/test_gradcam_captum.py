"""The engine's numpy Grad-CAM against Captum's LayerGradCam on the FP32 torch reference network.

The engine computes Grad-CAM weights as the exact gradient of the class logit with respect to the
pooled features, through the numpy head; Captum differentiates the whole torch graph. They must agree
(Pearson r >= 0.99 per map) on real images, for the predicted class and for another class.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from compression import reference as ref  # noqa: E402
from mendicant_desktop.core.metadata import Metadata, encode_metadata  # noqa: E402
from mendicant_desktop.core.preprocess import load_image, preprocess  # noqa: E402
from mendicant_desktop.core.saliency import GradCAM, head_forward, score_gradients  # noqa: E402
from tests.conftest import read_labels  # noqa: E402


@pytest.fixture(scope="module")
def reference():
    try:
        wheel = ref.find_sklesion_wheel(download=False)
    except FileNotFoundError as exc:
        pytest.skip(f"sklesion wheel not cached ({exc})")
    torch.set_num_threads(2)
    return ref.load_reference(wheel.parent, download=False)


@pytest.fixture(scope="module")
def batch(shared_data):
    isic = [r for r in read_labels(shared_data, "isic_dermoscopy") if r["pool"] == "external"][:4]
    pad = read_labels(shared_data, "pad_ufes20_clinical")[:2]
    imgs = [preprocess(load_image(shared_data / "isic_dermoscopy" / "images" / r["image"])) for r in isic]
    imgs += [preprocess(load_image(shared_data / "pad_ufes20_clinical" / "images" / r["image"])) for r in pad]
    metas = [Metadata()] * len(isic) + [Metadata(age=r["age"], sex=r["gender"], site=r["region"]) for r in pad]
    return np.stack(imgs).astype(np.float32), np.stack([encode_metadata(m) for m in metas])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def test_numpy_gradcam_matches_captum_layergradcam(reference, batch):
    images, meta = batch
    x, m = torch.from_numpy(images), torch.from_numpy(meta)
    with torch.no_grad():
        logits, feats = reference.logits_and_features(x, m)
    feats_np = feats.numpy()
    head = {k: v.astype(np.float32) for k, v in ref.head_arrays(reference.head).items()}
    hp = head_forward(head, feats_np.mean(axis=(2, 3)), meta)
    np.testing.assert_allclose(hp.logits, logits.numpy(), atol=1e-3)

    lgc = captum_attr.LayerGradCam(reference.logits, reference.backbone)
    top = logits.argmax(dim=1).numpy()
    other = (top + 3) % 7
    rs = []
    for targets in (top, other):
        weights = np.zeros((len(images), 7), np.float32)
        weights[np.arange(len(images)), targets] = 1.0
        ours = GradCAM()(feats_np, score_gradients(head, hp, weights))
        theirs = lgc.attribute((x, m), target=torch.from_numpy(targets), relu_attributions=True)
        theirs = theirs.detach().numpy()[:, 0]
        assert theirs.shape == ours.shape == feats_np.shape[:1] + feats_np.shape[2:]
        for a, b in zip(ours, theirs):
            if b.max() <= 0 and a.max() <= 0:
                continue  # no positive evidence for this class in either: both maps are empty
            rs.append(_pearson(a, b))
    assert len(rs) >= len(images)
    assert min(rs) >= 0.99, rs
