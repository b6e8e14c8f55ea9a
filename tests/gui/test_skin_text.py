"""The skin-type panel's wording: the estimate's confidence, and the one-line reason when unknown."""

from __future__ import annotations

from mendicant_desktop.core.results import SkinToneEstimate
from mendicant_desktop.gui import text


def _est(fst="V", p=0.42, p1=0.91):
    return SkinToneEstimate(fst=fst, ita=-12.0, skin_fraction=0.8, confidence=p, confidence_within_one=p1,
                            probabilities=(0.0, 0.01, 0.03, 0.25, 0.42, 0.29))


def test_known_estimate_states_its_confidence():
    head, detail = text.skin_text(_est(), None)
    assert head == "Fitzpatrick V — estimated, high confidence"
    assert detail.startswith("Confidence: 42% that it is exactly V, 91% that it is within one type (IV–VI). ")
    assert text.skin_text(_est(p1=0.8), None)[0].endswith("moderate confidence")
    assert text.skin_text(_est(p1=0.5), None)[0].endswith("low confidence")
    assert "(I–II)" in text.skin_text(_est("I", 0.6, 0.97), None)[1]  # the span stops at the scale's end


def test_unknown_gives_the_one_line_reason():
    est = SkinToneEstimate(fst="unknown", ita=None, skin_fraction=0.0,
                           reason="the image border is 100% black: a masked crop shows no surrounding skin")
    head, detail = text.skin_text(est, None)
    assert head == "Unknown — not estimated"
    assert detail == f"Cannot estimate: {est.reason}." and "\n" not in detail


def test_override_keeps_the_estimate_and_its_confidence():
    head, detail = text.skin_text(_est(), "VI")
    assert head == "Fitzpatrick VI — set by the clinician"
    assert detail == "The image-based estimate was V (confidence: 42% that it is exactly V, 91% that it is within one type (IV–VI))."
