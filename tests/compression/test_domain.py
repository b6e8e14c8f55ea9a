"""compression.domain on synthetic features whose answer is known in advance (torch-free)."""

import hashlib

import numpy as np
import pytest

from compression.domain import METHOD, domain_scores, fit_domain_check


def _data(shift: float, seed: int = 0):
    """In-domain rows ~ N(0, diag(10..0.1)); out-of-scope rows shifted by ``shift`` along the low-variance axes."""
    rng = np.random.default_rng(seed)
    n, c = 1500, 40
    scale = np.geomspace(10, 0.1, c)
    x = rng.normal(size=(n, c)) * scale
    oos = np.zeros(n, bool)
    oos[::7] = True  # 7 and the split's period 5 are coprime: out-of-scope rows land in every split
    x[oos, -10:] += shift
    split = np.array(["train", "train", "select", "gate", "train"] * (n // 5))
    return x.astype(np.float32), split, ~oos, oos


def test_a_real_shift_is_found_and_said_so(tmp_path):
    x, split, ind, oos = _data(shift=3.0)
    entry = fit_domain_check(x, split, ind, oos, tmp_path / "m.domain.npz", components=(8, 40), n_boot=200)
    assert entry["method"] == METHOD and entry["n_components"] == 40  # the low-variance axes are needed
    g = entry["gate"]["fitzpatrick17k_lesions"]
    assert g["auroc"] > 0.95 and entry["gate"]["separates"]
    assert "separates" in entry["summary"] and "NOT" not in entry["summary"]
    # the threshold flags ~5% of in-domain select rows by construction, most out-of-scope gate rows
    z = np.load(tmp_path / "m.domain.npz")
    s = domain_scores(x, z["mean"], z["components"], z["variances"])
    sel = (split == "select") & ind
    assert (s[sel] >= entry["threshold"]).mean() == pytest.approx(0.05, abs=0.02)
    assert g["flagged_out_of_scope"] > 0.8 and g["flagged_lesions"] < 0.15
    assert entry["sidecar_sha256"] == hashlib.sha256((tmp_path / "m.domain.npz").read_bytes()).hexdigest()
    # fitted on train only: in-domain train rows score about 1
    assert np.median(s[(split == "train") & ind]) == pytest.approx(1.0, abs=0.15)


def test_no_shift_is_reported_as_not_separating(tmp_path):
    x, split, ind, oos = _data(shift=0.0)
    entry = fit_domain_check(x, split, ind, oos, tmp_path / "n.domain.npz", components=(8,), n_boot=200)
    g = entry["gate"]["fitzpatrick17k_lesions"]
    assert 0.4 < g["auroc"] < 0.6 and not entry["gate"]["separates"]
    assert "does NOT reliably separate" in entry["summary"]


def test_bad_inputs(tmp_path):
    x, split, ind, oos = _data(shift=1.0)
    with pytest.raises(ValueError, match="one entry per record"):
        fit_domain_check(x[:-1], split, ind, oos, tmp_path / "x.npz")
    with pytest.raises(ValueError, match="too few"):
        fit_domain_check(x, np.array(["gate"] * len(x)), ind, oos, tmp_path / "x.npz")
