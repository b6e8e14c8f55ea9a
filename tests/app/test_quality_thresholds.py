"""The blur, exposure and tiny-lesion thresholds are the measured ones (benchmarks/results/quality_thresholds.json,
written by benchmarks/quality_benchmark.py on ../shared/data), the benchmark's rule does what its docstring says,
and the degraded copies it measures do fire the app's warnings on real images."""

from __future__ import annotations

import json

import pytest

from mendicant_desktop.app import quality
from tests.conftest import REPO, read_labels
from tests.support.benchmarks import load_benchmark

RESULTS = REPO / "benchmarks" / "results" / "quality_thresholds.json"


QB = load_benchmark("quality_benchmark")


def test_the_app_uses_the_measured_thresholds():
    d = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert set(d["warnings"]) == set(QB.TARGETS)
    for w, r in d["warnings"].items():
        assert getattr(quality, r["constant"]) == pytest.approx(r["threshold"]), (
            f"app.quality.{r['constant']} is not the measured {w} threshold; re-run benchmarks/quality_benchmark.py "
            "and copy its thresholds")


def test_the_results_keep_the_clean_image_budget_and_say_when_a_target_is_missed():
    d = json.loads(RESULTS.read_text(encoding="utf-8"))
    assert d["max_clean_flag"] == QB.MAX_CLEAN_FLAG and d["min_detection"] == QB.MIN_DETECTION
    for r in d["warnings"].values():
        per = r["per_dataset"]
        assert set(per) == set(QB.DATASETS)
        assert all(p["clean_flag_rate"] <= d["max_clean_flag"] for p in per.values())
        met = all(p["detection"][r["target"]] >= d["min_detection"] for p in per.values())
        assert r["target_met"] == met
        if r["chosen_by"].startswith("clean-flag limit"):  # no threshold met both: the target cannot be met
            assert not met


def test_the_rule_on_fixed_distributions():
    clean = {"a": [float(v) for v in range(100, 200)], "b": [float(v) for v in range(120, 220)]}
    # flags <= 5% of clean: below a's 5th value, 104, rounded down to 2 digits: 100; target detected >= 90%: above
    # 44 (the 45th of 50 values); the geometric middle of (44, 100], 66.3, rounded down: 66
    target = {"a": [float(v) for v in range(0, 45)] + [150.0] * 5, "b": [float(v) for v in range(0, 50)]}
    thr, how = QB.choose(clean, target, "low")
    assert how.startswith("middle") and thr == 66.0
    # a target the clean images overlap: the clean-image limit
    thr2, how2 = QB.choose(clean, {"a": [150.0] * 50, "b": [150.0] * 50}, "low")
    assert how2.startswith("clean-flag limit") and thr2 == 100.0
    assert QB._rate(clean["a"], "low", thr2) <= 0.05
    # the "high" direction (clipped white): fires at or above
    hi_clean = {"a": [0.0] * 96 + [0.01, 0.02, 0.03, 0.04]}
    thr3, _ = QB.choose(hi_clean, {"a": [0.5] * 20}, "high")
    assert QB._rate(hi_clean["a"], "high", thr3) <= 0.05 and QB._rate([0.5] * 20, "high", thr3) == 1.0


def test_degraded_real_images_fire_the_warnings(shared_data):
    from mendicant_desktop.app.images import downscale
    from mendicant_desktop.core.preprocess import load_image

    rows = read_labels(shared_data, "isic_dermoscopy")
    rgb = load_image(shared_data / "isic_dermoscopy" / "images" / rows[7]["image"])

    def warns(img):
        q = downscale(downscale(img, 2048), quality.QUALITY_SIDE)
        return quality.image_warnings(q, original_size=img.shape[:2])

    clean = warns(rgb)
    assert not any(w.startswith(("Heavy blur", "Overexposed", "Underexposed", "Tiny lesion")) for w in clean), clean
    assert any(w.startswith("Heavy blur") for w in warns(QB.blur(rgb, 0.01)))
    assert any(w.startswith("Overexposed") for w in warns(QB.exposure(rgb, 2.0)))
    assert any(w.startswith("Underexposed") for w in warns(QB.exposure(rgb, -3.0)))
    assert any(w.startswith("Tiny lesion") for w in warns(QB.shrunk(rgb, 8, 0)))
