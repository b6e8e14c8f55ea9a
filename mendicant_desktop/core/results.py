"""Frozen result records returned by the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
MALIGNANT_CLASSES: tuple[str, ...] = ("akiec", "bcc", "mel")
#: Where the malignant classes sit in :data:`CLASS_NAMES` (the model's output order): malignancy is their sum.
MALIGNANT_INDICES: tuple[int, ...] = tuple(CLASS_NAMES.index(c) for c in MALIGNANT_CLASSES)
CLASS_FULL_NAMES: dict[str, str] = {
    "akiec": "Actinic keratosis / intraepithelial carcinoma",
    "bcc": "Basal cell carcinoma",
    "bkl": "Benign keratosis-like lesion",
    "df": "Dermatofibroma",
    "mel": "Melanoma",
    "nv": "Melanocytic nevus",
    "vasc": "Vascular lesion",
}


def risk_band(malignancy: float, threshold: float) -> str:
    """'high' when the malignancy score reaches the operating threshold, else 'low'."""
    return "high" if malignancy >= threshold else "low"


@dataclass(frozen=True, eq=False)
class Prediction:
    """One image's assessment. ``cam`` is the Grad-CAM heatmap at feature-map resolution in [0, 1]."""

    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    malignancy: float
    threshold: float
    risk: str
    top_k: tuple[tuple[str, float], ...]
    model_name: str
    model_sha256: str
    cam: np.ndarray | None = field(default=None, repr=False)
    cam_target: str | None = None
    #: The ``features`` output averaged over h, w (C values): what a feature-distance domain check measures.
    pooled: np.ndarray | None = field(default=None, repr=False)

    @property
    def top_class(self) -> str:
        return self.top_k[0][0]

    def prob(self, name: str) -> float:
        return self.probabilities[self.class_names.index(name)]

    def as_dict(self) -> dict[str, float | str]:
        out: dict[str, float | str] = {c: p for c, p in zip(self.class_names, self.probabilities)}
        out.update(malignancy=self.malignancy, top_class=self.top_class, risk=self.risk)
        return out


@dataclass(frozen=True)
class SkinToneEstimate:
    """Image-based Fitzpatrick estimate. ``fst`` is 'I'..'VI' or 'unknown' (then ``reason`` says why, in one line).

    ``confidence`` is the model's probability that the type is exactly right and ``confidence_within_one`` that it
    is within one type (both None when unknown); ``probabilities`` is the posterior over I..VI when one was computed.
    """

    fst: str
    ita: float | None
    skin_fraction: float
    estimated: bool = True
    reason: str = ""
    confidence: float | None = None
    confidence_within_one: float | None = None
    probabilities: tuple[float, ...] | None = None

    @property
    def known(self) -> bool:
        return self.fst != "unknown"
