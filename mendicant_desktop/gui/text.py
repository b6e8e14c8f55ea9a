"""Plain-language wording shared by the case view, the PDF report and the CSV export (no Qt)."""

from __future__ import annotations

from mendicant_desktop.core.results import CLASS_FULL_NAMES, MALIGNANT_CLASSES, Prediction, SkinToneEstimate
from mendicant_desktop.core.skintone import FST_TYPES

DISCLAIMER = (
    "Decision support, not a diagnosis. MENDICANT estimates probabilities from one image; it can be wrong, "
    "has not been validated for every population, and does not replace clinical examination, dermoscopy by "
    "a trained clinician or histopathology."
)
DISCLAIMER_SHORT = "Decision support, not a diagnosis — the result does not replace clinical judgement or histopathology."

SEX_LABELS = {"female": "Female", "male": "Male", "unknown": "Not given"}
SITE_LABELS = {
    "arm": "Arm / hand",
    "head-or-neck": "Head / neck",
    "leg-or-genital": "Leg / foot / genital",
    "trunk": "Trunk",
    "unknown": "Not given",
}
FST_DESCRIPTIONS = {
    "I": "I – always burns, never tans",
    "II": "II – usually burns, tans minimally",
    "III": "III – sometimes burns, tans uniformly",
    "IV": "IV – burns minimally, always tans",
    "V": "V – very rarely burns, tans very easily",
    "VI": "VI – never burns",
}


def threshold_text(threshold: float, model_default: float | None, source: str = "") -> str:
    """The threshold as shown everywhere: "13%", or "20% (site threshold; the model's validated default is
    13%)" when it is not the model card's."""
    if model_default is None or abs(threshold - model_default) < 1e-12:
        return pct(threshold)
    who = {"site": "site threshold set by IT", "user": "changed in Settings"}.get(source, "not the default")
    return f"{pct(threshold)} ({who}; the model's validated default is {pct(model_default)})"


def prob_text(p: float) -> str:
    """A class probability as the probability bars show it, and the PDF too: one decimal, "<0.1%" below it."""
    return "<0.1%" if 0 < p < 0.0005 else f"{100 * p:.1f}%"


def pct(p: float) -> str:
    """A probability as a percentage, with a decimal where it matters (small values, low thresholds)."""
    v = 100.0 * float(p)
    if v != v:  # nan
        return "–"
    if 0 < v < 0.1:
        return "<0.1%"
    if v < 10 or 90 < v < 100:
        return f"{v:.1f}%"
    return f"{v:.0f}%"


def class_label(code: str) -> str:
    return f"{CLASS_FULL_NAMES.get(code, code)} ({code})"


def malignancy_definition() -> str:
    return " + ".join(CLASS_FULL_NAMES[c].split(" / ")[0].lower() for c in ("mel", "bcc", "akiec"))


def summary(pred: Prediction, warnings: list[str] | None = None, model_default: float | None = None,
            source: str = "") -> str:
    """Two or three short sentences a clinician can read at a glance (one more when the threshold is not the
    model card's ``model_default``)."""
    top, p_top = pred.top_k[0]
    first = f"Most likely: {class_label(top)} {pct(p_top)}"
    if len(pred.top_k) > 1:
        second, p2 = pred.top_k[1]
        first += f"; next {class_label(second)} {pct(p2)}"
    side = "at or above" if pred.risk == "high" else "below"
    parts = [
        first + ".",
        f"The malignancy score, {pct(pred.malignancy)}, is {side} the {pct(pred.threshold)} operating "
        f"threshold ({pred.risk.upper()} band).",
    ]
    if model_default is not None and abs(pred.threshold - model_default) >= 1e-12:
        who = {"site": "This is your clinic's site threshold, set by IT", "user": "This threshold was changed in "
               "Settings"}.get(source, "This is not the model's default threshold")
        parts.append(f"{who}; the model's validated default is {pct(model_default)}.")
    if pred.risk == "high" and top not in MALIGNANT_CLASSES:
        parts.append("The top class is benign, but the malignant classes together reach the threshold.")
    if pred.risk == "low" and top in MALIGNANT_CLASSES:
        parts.append("The top class is a malignant one although the summed score is below the threshold.")
    if warnings:
        n = len(warnings)
        parts.append(f"{n} warning{'s' if n > 1 else ''} (below): interpret with extra caution.")
    return " ".join(parts)


#: (lowest within-one-type probability, word) for the skin-type headline: how sure the estimate is, in one word.
SKIN_CONFIDENCE_LEVELS: tuple[tuple[float, str], ...] = ((0.9, "high"), (0.75, "moderate"), (0.0, "low"))


def skin_confidence_level(skin: SkinToneEstimate) -> str:
    """'high' / 'moderate' / 'low' from the probability that the estimate is within one type ('' if none)."""
    if not skin.known or skin.confidence_within_one is None:
        return ""
    return next(word for bound, word in SKIN_CONFIDENCE_LEVELS if skin.confidence_within_one >= bound)


def skin_confidence_text(skin: SkinToneEstimate) -> str:
    """"72% that it is exactly V, 95% that it is within one type (IV–VI)" (empty when there is no confidence)."""
    if not skin.known or skin.confidence is None:
        return ""
    text = f"{skin.confidence:.0%} that it is exactly {skin.fst}"
    if skin.confidence_within_one is not None:
        i = FST_TYPES.index(skin.fst)
        span = f"{FST_TYPES[max(0, i - 1)]}–{FST_TYPES[min(5, i + 1)]}"
        text += f", {skin.confidence_within_one:.0%} that it is within one type ({span})"
    return text


def skin_text(skin: SkinToneEstimate | None, override: str | None, enabled: bool = True) -> tuple[str, str]:
    """(headline, detail) for the skin-type panel and the report.

    A known estimate says how sure it is (the model's probability of that type, and of being within one type);
    an unknown one gives its one-line reason.
    """
    if override:
        head = f"Fitzpatrick {override} — set by the clinician"
        if skin is not None and skin.known:
            conf = skin_confidence_text(skin)
            detail = f"The image-based estimate was {skin.fst}" + (f" (confidence: {conf})." if conf else ".")
        elif skin is not None:
            detail = f"No image-based estimate: {skin.reason}."
        else:
            detail = ""
        return head, detail
    if skin is None:
        if not enabled:
            return "Not estimated", "Skin-type estimation is turned off in Settings."
        return "Not estimated", ""
    if skin.known:
        level, conf = skin_confidence_level(skin), skin_confidence_text(skin)
        return (
            f"Fitzpatrick {skin.fst} — estimated" + (f", {level} confidence" if level else ""),
            (f"Confidence: {conf}. " if conf else "")
            + "Estimated from the colour of the skin around the lesion. It is a proxy, not a clinical assessment: "
            "correct it below if it is wrong.",
        )
    return "Unknown — not estimated", f"Cannot estimate: {skin.reason}."
