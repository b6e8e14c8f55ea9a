"""compression.data: splits are reproducible, PAD never leaks patients, ham10000 never validates."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from compression.data import (
    CLASSES,
    Record,
    balanced_indices,
    balanced_weights,
    read_records,
    split_records,
    subset_records,
)


def _synthetic() -> list[Record]:
    recs = []
    for i in range(300):
        pool = "ham10000" if i < 100 else "external"
        dx = ["MEL", "NV", "BCC"][i % 3]
        recs.append(Record("isic", pool, f"i{i}", f"i{i}", dx, "mel", 4, int(dx != "NV")))
    for p in range(80):
        for k in range(1 + p % 3):
            recs.append(Record("pad", "pad", f"p{p}_{k}", "x", "BCC", "bcc", 1, p % 2, patient_id=f"PAT_{p}",
                               fst=["I", "II", "III", "unknown"][p % 4],
                               fst_source="label" if p % 4 != 3 else "estimated"))  # fmt: skip
    return recs


def _check_split(recs: list[Record], split: list[str]) -> None:
    assert all(s == "train" for r, s in zip(recs, split, strict=True) if r.pool == "ham10000")
    by_patient: dict[str, set[str]] = {}
    for r, s in zip(recs, split, strict=True):
        if r.dataset == "pad":
            by_patient.setdefault(r.patient_id, set()).add(s)
    assert all(len(v) == 1 for v in by_patient.values()), "a PAD patient is in both splits"


def test_split_synthetic_reproducible_and_leak_free() -> None:
    recs = _synthetic()
    a = split_records(recs, 0.3, 0.35, seed=1)
    b = split_records(recs, 0.3, 0.35, seed=1)
    c = split_records(recs, 0.3, 0.35, seed=2)
    assert a == b and a != c
    _check_split(recs, a)
    ext = [s for r, s in zip(recs, a, strict=True) if r.pool == "external"]
    assert Counter(ext)["val"] == 60  # 30% of each dx stratum of 100
    pad_val = sum(1 for r, s in zip(recs, a, strict=True) if r.dataset == "pad" and s == "val")
    n_pad = sum(1 for r in recs if r.dataset == "pad")
    assert 0.25 < pad_val / n_pad < 0.45


def test_balanced_sampler_counts() -> None:
    keys = ["a"] * 90 + ["b"] * 9 + ["c"] * 1
    w = balanced_weights(keys)
    assert w.sum() == pytest.approx(1.0)
    for k in "abc":
        assert sum(wi for wi, ki in zip(w, keys, strict=True) if ki == k) == pytest.approx(1 / 3)
    draws = balanced_indices(w, 30000, np.random.default_rng(0))
    counts = Counter(keys[i] for i in draws)
    for k in "abc":
        assert abs(counts[k] - 10000) < 400
    again = balanced_indices(w, 100, np.random.default_rng(0))
    assert np.array_equal(again, balanced_indices(w, 100, np.random.default_rng(0)))


def test_real_data_splits(shared_data) -> None:
    recs = read_records(shared_data)
    assert len(recs) == 1971 + 1234
    scc = [r for r in recs if r.dx == "SCC"]
    assert scc and all(r.dx7 == "akiec" and r.label == CLASSES.index("akiec") for r in scc)
    pad_fst = Counter(r.fst for r in recs if r.dataset == "pad" and r.fst_source == "label")
    assert pad_fst["II"] == 454 and pad_fst["I"] == 88
    a = split_records(recs, 0.3, 0.35, seed=20261127)
    assert a == split_records(recs, 0.3, 0.35, seed=20261127)
    _check_split(recs, a)
    val_fst = Counter(r.fst for r, s in zip(recs, a, strict=True) if r.dataset == "pad" and s == "val")
    for g in ("I", "II", "III"):
        assert val_fst[g] >= 25, val_fst
    sub = subset_records(recs, 100, seed=0)
    assert 60 <= len(sub) <= 160
    assert {r.dataset for r in sub} == {"isic", "pad"}
    assert sub == subset_records(recs, 100, seed=0)
