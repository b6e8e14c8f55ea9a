"""The out-of-scope check at run time: a card with compression.domain's entry and sidecar warns on a photo whose
score reaches the threshold, in the assessment and the --batch row alike; a tampered sidecar or a card without
the entry gives no warning and no crash; old cards' probability rules keep working."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from compression.domain import METHOD, logistic_scores
from mendicant_desktop.app import quality
from mendicant_desktop.app.assessment import assess
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.quality import FEATURE_METHOD, domain_warnings, out_of_scope_score
from mendicant_desktop.app.scoring import iter_scored
from tests.gui.conftest import lesion_image

#: A 3-d sidecar and vectors whose scores are worked by hand (see each row).
HAND = {"mean": np.array([1.0, 2, 3]), "scale": np.array([1.0, 2, 4]), "coef": np.array([1.0, -1, 0.5]),
        "intercept": np.array([-0.5])}
HAND_X = np.array([[2.0, 4, 7],   # ((1, 1, 1) . (1, -1, 0.5)) - 0.5 = 0     -> 0.5
                   [1.0, 2, 3],   # 0 - 0.5 = -0.5                          -> 1 / (1 + e^0.5)
                   [3.0, 0, 3]])  # ((2, -1, 0) . coef) - 0.5 = 2.5          -> 1 / (1 + e^-2.5)
HAND_SCORES = [0.5, 0.3775406687981454, 0.9241418199787566]
KEY = "looks unlike the skin lesions the model was trained on"


def _card(tmp_path, threshold: float, arrays=HAND) -> tuple[dict, str]:
    np.savez(tmp_path / "m.domain.npz", **arrays)
    sha = hashlib.sha256((tmp_path / "m.domain.npz").read_bytes()).hexdigest()
    return {"domain_check": {"method": FEATURE_METHOD, "sidecar": "m.domain.npz", "sidecar_sha256": sha,
                             "threshold": threshold}}, str(tmp_path)


@pytest.fixture(autouse=True)
def _fresh_sidecar_cache():
    quality._load_domain_sidecar.cache_clear()
    yield
    quality._load_domain_sidecar.cache_clear()


def test_app_and_compression_compute_the_hand_worked_scores():
    assert METHOD == FEATURE_METHOD == "feature_logistic"
    got = [out_of_scope_score(x, *(HAND[k] for k in ("mean", "scale", "coef", "intercept"))) for x in HAND_X]
    assert got == pytest.approx(HAND_SCORES, abs=1e-12)
    assert logistic_scores(HAND_X, **HAND) == pytest.approx(HAND_SCORES, abs=1e-12)
    assert out_of_scope_score(np.array([1e6, -1e6, 0.0]), *HAND.values()) == pytest.approx(1.0)  # no overflow


def test_warns_at_or_above_the_threshold_only(tmp_path):
    card, folder = _card(tmp_path, threshold=0.5)
    at, below, above = (domain_warnings(card, [1 / 7] * 7, pooled=x, card_dir=folder) for x in HAND_X)
    assert below == []
    (w,) = at
    assert KEY in w and "rash, acne" in w and "out-of-scope score 0.50, at or above 0.50" in w
    assert "may be meaningless" in w
    (w,) = above
    assert "out-of-scope score 0.92, at or above 0.50" in w


def test_tampered_missing_or_malformed_sidecar_gives_no_warning_and_no_crash(tmp_path):
    card, folder = _card(tmp_path, threshold=0.1)
    x = HAND_X[2]
    assert domain_warnings(card, [1 / 7] * 7, pooled=x, card_dir=folder)  # it does warn when intact
    quality._load_domain_sidecar.cache_clear()
    (tmp_path / "m.domain.npz").write_bytes(b"x")  # tampered
    assert domain_warnings(card, [1 / 7] * 7, pooled=x, card_dir=folder) == []
    quality._load_domain_sidecar.cache_clear()
    (tmp_path / "m.domain.npz").unlink()  # missing
    assert domain_warnings(card, [1 / 7] * 7, pooled=x, card_dir=folder) == []
    # an intact file of the card's sha256 that is no sidecar (wrong arrays), a card without a sha256, a pooled
    # vector of the wrong size, a non-numeric threshold: no warning
    np.savez(tmp_path / "m.domain.npz", mean=np.zeros(3))
    bad = {"domain_check": dict(card["domain_check"],
                                sidecar_sha256=hashlib.sha256((tmp_path / "m.domain.npz").read_bytes()).hexdigest())}
    assert domain_warnings(bad, [1 / 7] * 7, pooled=x, card_dir=folder) == []
    card, folder = _card(tmp_path, threshold=0.1)
    assert domain_warnings({"domain_check": dict(card["domain_check"], sidecar_sha256="")}, [1 / 7] * 7, pooled=x,
                           card_dir=folder) == []
    assert domain_warnings(card, [1 / 7] * 7, pooled=np.zeros(5), card_dir=folder) == []
    assert domain_warnings({"domain_check": dict(card["domain_check"], threshold="high")}, [1 / 7] * 7, pooled=x,
                           card_dir=folder) == []


def test_no_entry_no_warning(tmp_path):
    assert domain_warnings({}, [1 / 7] * 7, pooled=HAND_X[2], card_dir=str(tmp_path)) == []
    assert domain_warnings({"domain_check": None}, [1 / 7] * 7, pooled=HAND_X[2], card_dir=str(tmp_path)) == []
    card, folder = _card(tmp_path, threshold=0.1)
    assert domain_warnings(card, [1 / 7] * 7, pooled=None, card_dir=folder) == []  # no features: no check
    # the replaced method is not read (its sidecar arrays are gone)
    old = {"domain_check": dict(card["domain_check"], method="feature_mahalanobis_pca")}
    assert domain_warnings(old, [1 / 7] * 7, pooled=HAND_X[2], card_dir=folder) == []


def test_a_card_with_the_entry_warns_in_the_assessment_and_the_batch_row(tiny_bundle, tmp_path):
    engine = load_engine(tiny_bundle, threads=1)
    near, far = lesion_image(tmp_path / "near.jpg", seed=1), tmp_path / "far.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))[..., None].repeat(3, 2)).save(far)
    pn, pf = (assess(engine, p).prediction.pooled for p in (near, far))
    assert pn is not None and pn.ndim == 1 and not np.allclose(pn, pf)
    # a sidecar whose score is sigmoid(-2) at the near image and sigmoid(+2) at the far one
    d = (pf - pn).astype(np.float64)
    arrays = {"mean": pn.astype(np.float64), "scale": np.ones(pn.size), "coef": 4.0 * d / float(d @ d),
              "intercept": np.array([-2.0])}
    folder = tmp_path / "model"
    shutil.copytree(tiny_bundle.parent, folder)
    card_path = folder / tiny_bundle.name
    extra, _ = _card(folder, threshold=0.5, arrays=arrays)
    card = json.loads(card_path.read_text())
    card.update(extra)
    card_path.write_text(json.dumps(card))
    eng2 = load_engine(card_path, threads=1)
    a_near, a_far = assess(eng2, near), assess(eng2, far)
    assert not any(KEY in w for w in a_near.warnings)
    (w,) = [w for w in a_far.domain_warnings if KEY in w]
    assert f"out-of-scope score {1 / (1 + np.exp(-2)):.2f}, at or above 0.50" in w  # 0.88
    rows = {s.path: s.row for s in iter_scored([str(near), str(far)], eng2)}
    assert KEY in rows[str(far)]["warnings"] and KEY not in rows[str(near)]["warnings"]
    # tampered after loading the card: no check rather than a wrong one
    (folder / "m.domain.npz").write_bytes(b"x")
    quality._load_domain_sidecar.cache_clear()
    assert not any(KEY in w for w in assess(eng2, far).warnings)
    # the probability-based entry of older cards still works
    card["domain_check"] = {"min_top_probability": 0.999}
    card_path.write_text(json.dumps(card))
    assert any("no class reaches" in w for w in assess(load_engine(card_path, threads=1), far).warnings)
