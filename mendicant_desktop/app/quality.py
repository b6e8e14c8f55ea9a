"""Image-quality and domain warnings, given with every assessment: GUI cases, batch rows, server responses.

* too small -- the shorter side is under :data:`MIN_SIDE` pixels (the model upscales it a lot);
* heavy blur -- variance of the 4-neighbour Laplacian on a grey copy area-averaged to ~512 px
  (the scale the model works at, x2), over non-black pixels away from mask edges;
* mostly not skin -- the share of pixels with skin/lesion colours (CIELAB hue red..yellow with some
  chroma, or nearly grey and not white) is below :data:`MIN_SKIN_LIKE`; a black masked background is
  named as such (every PAD-UFES-20 crop gets it: they really are mostly black);
* outside the training domain -- only when the model card defines ``domain_check``: the out-of-scope check of
  ``compression/domain.py`` (``method: feature_logistic``: a logistic regression on the pooled features that
  tells Fitzpatrick17k's non-neoplastic photos -- rashes, acne -- from lesions; see ``docs/domain_check.md``), or
  the probability rules of older cards (``{"min_top_probability": p}`` and/or ``{"max_entropy": nats}``).

The blur, exposure and tiny-lesion thresholds are measured: ``benchmarks/quality_benchmark.py`` computes
:func:`measure_quality` on every image of ``../shared/data`` and on degraded copies (Gaussian blur, +-EV in linear
light, the photo shrunk onto its own skin colour) and chooses each threshold so that it flags <= 5% of the clean
images of every data set and detects >= 90% of its target degradation where both are possible
(``benchmarks/results/quality_thresholds.json``, rendered into ``docs/gui.md``; a test checks that the constants
here equal the JSON's). "Too small" and "mostly not skin" were set by hand on the same data: "too small" fires
for none of them (180 px is the smallest), "mostly not skin" for 0.7% of the dermoscopy images.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.preprocess import MODEL_SIZE
from mendicant_desktop.core.skintone import srgb_to_lab

from .images import downscale

MIN_SIDE = 128
BLUR_VARIANCE = 29.0
MIN_SKIN_LIKE = 0.35
#: The scale the quality checks work at (~2x the model's input); callers may pass a copy this large.
QUALITY_SIDE = 512
_SKIN_SIDE = 128
#: Share of near-black pixels above which "mostly not skin" is blamed on a masked background.
_MASKED_BLACK_SHARE = 0.5
#: Overexposure: share of the non-black pixels clipped white (every channel >= 250) at or above which the photo is
#: called overexposed (measured: see the module docstring).
CLIPPED_WHITE_SHARE = 0.0016
#: Underexposure: the 95th percentile of luma (0..255) of the non-black pixels below this means the photo is dark.
DARK_P95_LUMA = 94.0
#: Tiny lesion: the lesion covers less than this share of the photo (the model sees it at 254x254).
TINY_LESION_SHARE = 0.015
#: A pixel whose every channel is below this is mask-black (a masked crop's background), left out of exposure.
_MASK_BLACK_MAX = 20
#: Fewer non-black pixels than this on the ~128 px copy: the exposure checks judge the whole (black) image.
_MIN_LIT_PIXELS = 16


def _area_downsample(img: np.ndarray, side: int) -> np.ndarray:
    """Box-average copy with the longest side <= ``side`` (the app's one downscaler), as float32."""
    return np.asarray(downscale(img, side), dtype=np.float32)


def laplacian_variance(rgb: np.ndarray) -> float:
    """Sharpness: variance of the Laplacian of the grey image at ~512 px, ignoring black (masked) areas."""
    small = _area_downsample(rgb[..., :3], QUALITY_SIDE)
    g = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if min(g.shape) < 3:
        return 0.0
    lap = -4.0 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    valid = g > 20.0
    # keep pixels whose whole 3x3 neighbourhood is non-black: no mask edges
    v = valid[1:-1, 1:-1] & valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    vals = lap[v]
    if vals.size < 64:
        return float(lap.var()) if lap.size else 0.0
    return float(vals.var())


def _lesion_share(rgb: np.ndarray) -> float | None:
    """Share of the image the lesion mask covers (None when no lesion is found at all)."""
    from mendicant_desktop.core.explain import MIN_LESION_FRACTION, lesion_mask

    try:
        mask, _kind = lesion_mask(np.asarray(downscale(rgb[..., :3], 256)))
    except ValueError:
        return None
    share = float(mask.mean()) if mask.size else 0.0
    return share if share >= MIN_LESION_FRACTION / 4 else None


def skin_like_fraction(rgb: np.ndarray) -> tuple[float, float]:
    """(share of skin/lesion-coloured pixels, share of near-black pixels) on a ~128 px copy."""
    small = _area_downsample(rgb[..., :3], _SKIN_SIDE)
    lab = srgb_to_lab(np.clip(small, 0, 255).astype(np.uint8))
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    hue = np.degrees(np.arctan2(b, a))
    chroma = np.hypot(a, b)
    coloured = (chroma >= 5) & (hue > -45) & (hue < 100) & (L < 97)  # red..yellow: skin and pigment
    greyish = (chroma < 15) & (L < 88)  # weak colour casts (bluish dermoscopy light), dark pigment
    skin = (L > 10) & (coloured | greyish)
    black = (L < 10) | (small.max(axis=2) < 20)
    return float(skin.mean()), float(black.mean())


@dataclass(frozen=True)
class QualityMeasures:
    """The figures the low-quality warnings compare with their thresholds (``benchmarks/quality_benchmark.py``
    computes them on the shared data and on degraded copies to choose the thresholds)."""

    min_side: int
    #: :func:`laplacian_variance` at ~512 px (lower = blurrier).
    sharpness: float
    #: Share of the non-black pixels that are clipped white (every channel >= 250), on a ~128 px copy.
    clipped_white: float
    #: 95th percentile of luma (0..255) over the pixels that are not mask-black (the whole image if nearly all is).
    bright_luma: float
    #: Share of the photo the lesion mask covers (None: no lesion found).
    lesion_share: float | None
    #: Shares of skin/lesion-coloured and of near-black pixels (:func:`skin_like_fraction`).
    skin_like: float
    black: float


def measure_quality(rgb: np.ndarray, original_size: tuple[int, int] | None = None) -> QualityMeasures:
    """The quality figures of an image (``rgb`` and ``original_size`` as in :func:`image_warnings`)."""
    h, w = original_size if original_size is not None else rgb.shape[:2]
    small = _area_downsample(rgb[..., :3], _SKIN_SIDE)
    mask_black = small.max(axis=-1) < _MASK_BLACK_MAX
    lit = ~mask_black
    white = small.min(axis=-1) >= 250
    enough = int(lit.sum()) >= _MIN_LIT_PIXELS  # else the image is (nearly) all black: judge every pixel
    clipped = float(white[lit].mean()) if enough else float(white.mean()) if white.size else 0.0
    luma = small @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    vals = luma[lit] if enough else luma.ravel()
    bright = float(np.percentile(vals, 95)) if vals.size else 0.0
    skin, black = skin_like_fraction(rgb)
    return QualityMeasures(int(min(h, w)), laplacian_variance(rgb), clipped, bright, _lesion_share(rgb), skin, black)


def image_warnings(rgb: np.ndarray, original_size: tuple[int, int] | None = None) -> list[str]:
    """Plain-language warnings about the input image itself (empty list when none apply).

    ``rgb`` may be a downscaled copy (>= :data:`QUALITY_SIDE`, the scale the checks work at); ``original_size`` (H, W) is
    then the decoded image's size, for the "too small" check.
    """
    return warnings_for(measure_quality(rgb, original_size), original_size or rgb.shape[:2])


def warnings_for(m: QualityMeasures, size: tuple[int, int]) -> list[str]:
    """The warnings that the figures ``m`` of an image of ``size`` (H, W) call for."""
    out: list[str] = []
    h, w = size
    if m.min_side < MIN_SIDE:
        out.append(
            f"Image too small ({w}×{h} px): the model works at {MODEL_SIZE[1]}×{MODEL_SIZE[0]} and had to enlarge it; fine detail "
            "is missing. Use a closer or higher-resolution photo if you can."
        )
    if m.sharpness < BLUR_VARIANCE:
        out.append(
            f"Heavy blur (sharpness {m.sharpness:.1f}, below {BLUR_VARIANCE:g}): the lesion's structure may not be "
            "visible to the model. Retake the photo in focus if possible."
        )
    if m.clipped_white >= CLIPPED_WHITE_SHARE:
        out.append(
            f"Overexposed: {m.clipped_white:.1%} of the image is clipped to pure white, where colour and structure are "
            "lost. "
            "Retake with less light or flash if possible."
        )
    if m.bright_luma < DARK_P95_LUMA:
        out.append(
            "Underexposed: the whole image is very dark, so colours and structure are hard to see. "
            "Retake with more light if possible."
        )
    if m.lesion_share is not None and m.lesion_share < TINY_LESION_SHARE:
        out.append(
            f"Tiny lesion: it covers only {m.lesion_share:.1%} of the photo, and the model sees the whole photo "
            f"at {MODEL_SIZE[1]}×{MODEL_SIZE[0]}. Move closer or crop around the lesion."
        )
    if m.skin_like < MIN_SKIN_LIKE:
        if m.black >= _MASKED_BLACK_SHARE:
            out.append(
                f"Mostly not skin: {m.black:.0%} of the image is black background (a masked or cropped image); "
                "only the lesion is visible, so the skin type cannot be judged and the model sees an unusual input."
            )
        else:
            out.append(
                f"Mostly not skin: only {m.skin_like:.0%} of the image has skin or lesion colours. Check that this is "
                "a photo of a skin lesion (not a document, screenshot or strong colour cast)."
            )
    return out


#: The card's ``domain_check.method`` of the out-of-scope check (written by ``compression/domain.py``).
FEATURE_METHOD = "feature_logistic"
#: The arrays of its ``.domain.npz`` sidecar.
_SIDECAR_KEYS = ("mean", "scale", "coef", "intercept")


@functools.lru_cache(maxsize=4)
def _load_domain_sidecar(path: str, sha256: str) -> tuple[np.ndarray, ...] | None:
    """The sidecar's (mean, scale, coef, intercept) as float64, or None when it is missing, is not the card's
    file (sha256) or does not hold those arrays: then there is no check rather than a wrong one."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not sha256 or hashlib.sha256(data).hexdigest() != sha256:
        return None
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrs = tuple(np.asarray(z[k], np.float64).reshape(-1) for k in _SIDECAR_KEYS)
    except (OSError, ValueError, KeyError, EOFError):
        return None
    mean, scale, coef, intercept = arrs
    if not (mean.size == scale.size == coef.size and intercept.size == 1):
        return None
    return arrs


def out_of_scope_score(pooled: np.ndarray, mean: np.ndarray, scale: np.ndarray, coef: np.ndarray,
                       intercept: np.ndarray | float) -> float:
    """``sigmoid(((pooled - mean) / scale) . coef + intercept)``: how much the photo looks like Fitzpatrick17k's
    non-neoplastic photos (rashes, acne, ...) rather than a lesion; the formula of
    ``compression.domain.logistic_scores``."""
    z = float(((np.asarray(pooled, np.float64).reshape(-1) - mean) / scale) @ coef)
    z += float(np.asarray(intercept, np.float64).reshape(-1)[0])
    return float(np.exp(-np.logaddexp(0.0, -z)))


def _out_of_scope_warning(check: Mapping[str, Any], pooled: np.ndarray, card_dir: str | os.PathLike) -> str | None:
    side = _load_domain_sidecar(str(Path(card_dir) / str(check.get("sidecar", ""))),
                                str(check.get("sidecar_sha256") or ""))
    thr = check.get("threshold")
    if side is None or thr is None or np.asarray(pooled).size != side[0].size:
        return None
    score, thr = out_of_scope_score(pooled, *side), float(thr)
    if not score >= thr:
        return None
    return (f"This photo looks unlike the skin lesions the model was trained on (for example a rash, acne or "
            f"another non-lesion condition): out-of-scope score {score:.2f}, at or above {thr:.2f}. The result "
            "may be meaningless.")


def domain_warnings(card_raw: Mapping[str, Any], probabilities: tuple[float, ...] | list[float], *,
                    pooled: np.ndarray | None = None, card_dir: str | os.PathLike | None = None) -> list[str]:
    """Warnings from the model card's optional ``domain_check`` (none when the card defines none).

    Two kinds: the probability-based one of older cards (``min_top_probability``, ``max_entropy``) and the
    out-of-scope check (``method`` :data:`FEATURE_METHOD`, with a ``.domain.npz`` sidecar beside the card whose
    sha256 the card gives), measured on ``pooled`` (the model's features averaged over h, w). A missing or
    tampered sidecar gives no warning, never a crash."""
    check = card_raw.get("domain_check") if isinstance(card_raw, Mapping) else None
    if not isinstance(check, Mapping):
        return []
    p = np.asarray(probabilities, dtype=np.float64)
    out: list[str] = []
    try:
        if check.get("method") == FEATURE_METHOD and pooled is not None and card_dir is not None:
            w = _out_of_scope_warning(check, pooled, card_dir)
            if w:
                out.append(w)
        min_top = check.get("min_top_probability")
        if min_top is not None and p.size and float(p.max()) < float(min_top):
            out.append(
                f"Outside the model's training domain: no class reaches {float(min_top):.0%} "
                f"(highest {p.max():.0%}). Treat this result with extra caution."
            )
        max_ent = check.get("max_entropy")
        if max_ent is not None and p.size:
            ent = float(-(p[p > 0] * np.log(p[p > 0])).sum())
            if ent > float(max_ent):
                out.append(
                    f"Outside the model's training domain: the prediction is very uncertain (entropy {ent:.2f} "
                    f"> {float(max_ent):.2f}). Treat this result with extra caution."
                )
    except (TypeError, ValueError, KeyError):
        return out
    return out


#: Skin types the model was barely validated on (almost absent from every labelled set it was tested on).
CAUTION_FST = frozenset({"V", "VI"})
FST_CAUTION = ("Skin type V–VI: the model's performance on dark skin is unknown (almost no V–VI images in the "
               "data it was validated on). Interpret this result with extra caution.")


def fst_caution(fst: str | None) -> str | None:
    """The caution for a case whose skin type, estimated or set by the clinician, is V or VI (else None)."""
    return FST_CAUTION if fst in CAUTION_FST else None
