"""Image-quality and domain warnings, given with every assessment: GUI cases, batch rows, server responses.

* too small -- the shorter side is under :data:`MIN_SIDE` pixels (the model upscales it a lot);
* heavy blur -- variance of the 4-neighbour Laplacian on a grey copy area-averaged to ~512 px
  (the scale the model works at, x2), over non-black pixels away from mask edges;
* mostly not skin -- the share of pixels with skin/lesion colours (CIELAB hue red..yellow with some
  chroma, or nearly grey and not white) is below :data:`MIN_SKIN_LIKE`; a black masked background is
  named as such (every PAD-UFES-20 crop gets it: they really are mostly black);
* outside the training domain -- only when the model card defines ``domain_check``
  (``{"min_top_probability": p}`` and/or ``{"max_entropy": nats}``).

Thresholds were set on ``../shared/data``: heavy blur fires for none of the real images, "too small"
for none of them (180 px is the smallest), "mostly not skin" for 0.7% of the dermoscopy images; a 1-px
Gaussian blur of a 180 px dermoscopy image and a photographed text page do fire.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mendicant_desktop.core.preprocess import MODEL_SIZE
from mendicant_desktop.core.skintone import srgb_to_lab

from .images import downscale

MIN_SIDE = 128
BLUR_VARIANCE = 12.0
MIN_SKIN_LIKE = 0.35
#: The scale the quality checks work at (~2x the model's input); callers may pass a copy this large.
QUALITY_SIDE = 512
_SKIN_SIDE = 128
#: Share of near-black pixels above which "mostly not skin" is blamed on a masked background.
_MASKED_BLACK_SHARE = 0.5


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


def image_warnings(rgb: np.ndarray, original_size: tuple[int, int] | None = None) -> list[str]:
    """Plain-language warnings about the input image itself (empty list when none apply).

    ``rgb`` may be a downscaled copy (>= :data:`QUALITY_SIDE`, the scale the checks work at); ``original_size`` (H, W) is
    then the decoded image's size, for the "too small" check.
    """
    out: list[str] = []
    h, w = original_size if original_size is not None else rgb.shape[:2]
    if min(h, w) < MIN_SIDE:
        out.append(
            f"Image too small ({w}×{h} px): the model works at {MODEL_SIZE[1]}×{MODEL_SIZE[0]} and had to enlarge it; fine detail "
            "is missing. Use a closer or higher-resolution photo if you can."
        )
    lv = laplacian_variance(rgb)
    if lv < BLUR_VARIANCE:
        out.append(
            f"Heavy blur (sharpness {lv:.1f}, below {BLUR_VARIANCE:g}): the lesion's structure may not be "
            "visible to the model. Retake the photo in focus if possible."
        )
    skin, black = skin_like_fraction(rgb)
    if skin < MIN_SKIN_LIKE:
        if black >= _MASKED_BLACK_SHARE:
            out.append(
                f"Mostly not skin: {black:.0%} of the image is black background (a masked or cropped image); "
                "only the lesion is visible, so the skin type cannot be judged and the model sees an unusual input."
            )
        else:
            out.append(
                f"Mostly not skin: only {skin:.0%} of the image has skin or lesion colours. Check that this is "
                "a photo of a skin lesion (not a document, screenshot or strong colour cast)."
            )
    return out


def domain_warnings(card_raw: Mapping[str, Any], probabilities: tuple[float, ...] | list[float]) -> list[str]:
    """Warnings from the model card's optional ``domain_check`` (none when the card defines none)."""
    check = card_raw.get("domain_check") if isinstance(card_raw, Mapping) else None
    if not isinstance(check, Mapping):
        return []
    p = np.asarray(probabilities, dtype=np.float64)
    out: list[str] = []
    try:
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
    except (TypeError, ValueError):
        return []
    return out
