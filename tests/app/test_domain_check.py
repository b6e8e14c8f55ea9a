"""The feature-distance domain check at run time: a card with compression.domain's entry and sidecar warns on
an image far from the fitted features, in the assessment and the --batch row alike; old cards keep working."""

import json
import shutil

import numpy as np

from compression.domain import METHOD, domain_scores, fit_domain_check
from mendicant_desktop.app.assessment import assess
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.quality import FEATURE_METHOD, feature_distance
from mendicant_desktop.app.scoring import iter_scored
from tests.gui.conftest import lesion_image


def test_the_app_and_compression_compute_the_same_distance(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 12)).astype(np.float32)
    oos = np.zeros(400, bool)
    oos[::7] = True
    split = np.array(["train", "select", "gate", "train"] * 100)
    entry = fit_domain_check(x, split, ~oos, oos, tmp_path / "t.domain.npz", components=(6,), n_boot=50)
    assert entry["method"] == METHOD == FEATURE_METHOD
    z = np.load(tmp_path / "t.domain.npz")
    ref = domain_scores(x[:5], z["mean"], z["components"], z["variances"])
    got = [feature_distance(r, z["mean"].astype(np.float64), z["components"].astype(np.float64),
                            z["variances"].astype(np.float64)) for r in x[:5]]
    assert np.allclose(ref, got, rtol=1e-6)


def test_a_card_with_the_entry_warns_far_images(tiny_bundle, tmp_path):
    engine = load_engine(tiny_bundle, threads=1)
    near, far = lesion_image(tmp_path / "near.jpg", seed=1), tmp_path / "far.png"
    from PIL import Image

    Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))[..., None].repeat(3, 2)).save(far)
    pn, pf = (assess(engine, p).prediction.pooled for p in (near, far))
    assert pn is not None and pn.ndim == 1 and not np.allclose(pn, pf)
    # a sidecar centred on the near image: the far one is at distance |pf - pn| / sqrt(var)
    k = min(4, pn.size)
    comps = np.eye(pn.size, dtype=np.float32)[:k]
    var = np.full(k, float(((pf - pn)[:k] ** 2).mean()) + 1e-12, np.float32)
    folder = tmp_path / "model"
    shutil.copytree(tiny_bundle.parent, folder)
    card_path = folder / tiny_bundle.name
    np.savez(folder / "m.domain.npz", mean=pn.astype(np.float32), components=comps, variances=var)
    import hashlib

    sha = hashlib.sha256((folder / "m.domain.npz").read_bytes()).hexdigest()
    d_far = feature_distance(pf, pn.astype(np.float64), comps.astype(np.float64), var.astype(np.float64))
    assert d_far > 0.5
    card = json.loads(card_path.read_text())
    card["domain_check"] = {"method": FEATURE_METHOD, "sidecar": "m.domain.npz", "sidecar_sha256": sha,
                            "threshold": d_far / 2, "n_components": k}
    card_path.write_text(json.dumps(card))
    eng2 = load_engine(card_path, threads=1)
    a_near, a_far = assess(eng2, near), assess(eng2, far)
    assert not any("feature distance" in w for w in a_near.warnings)
    (w,) = [w for w in a_far.domain_warnings if "feature distance" in w]
    assert f"{d_far:.2f}" in w and "Unlike the images the model was trained on" in w
    rows = {s.path: s.row for s in iter_scored([str(near), str(far)], eng2)}
    assert "feature distance" in rows[str(far)]["warnings"] and "feature distance" not in rows[str(near)]["warnings"]
    # a tampered sidecar: no check rather than a wrong one
    (folder / "m.domain.npz").write_bytes(b"x")
    from mendicant_desktop.app import quality

    quality._load_domain_sidecar.cache_clear()
    assert not any("feature distance" in w for w in assess(eng2, far).warnings)
    # the probability-based entry of older cards still works beside it
    card["domain_check"] = {"min_top_probability": 0.999}
    card_path.write_text(json.dumps(card))
    assert any("no class reaches" in w for w in assess(load_engine(card_path, threads=1), far).warnings)
