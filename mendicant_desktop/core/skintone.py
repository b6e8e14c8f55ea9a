"""Skin-tone estimate: Individual Typology Angle (ITA) on visible skin, mapped to Fitzpatrick I-VI.

ITA = arctan((L* - 50) / b*) in degrees, on skin pixels in CIELAB (D65). It is a proxy for the
clinician-assigned Fitzpatrick type: callers show it as "estimated" and let the user override it.
Skin is taken from the image border ring (the lesion is usually central), on the bright side of an
Otsu split of the blurred L* channel, excluding near-black pixels (dermoscope vignette, masked
backgrounds) and specular highlights. Too little such skin gives "unknown" with a reason.
"""

from __future__ import annotations

import numpy as np

from .results import SkinToneEstimate

#: (lower ITA bound, type), checked in order: > 55 I, 41-55 II, 28-41 III, 10-28 IV, -30-10 V, < -30 VI.
ITA_BANDS: tuple[tuple[float, str], ...] = ((55.0, "I"), (41.0, "II"), (28.0, "III"), (10.0, "IV"), (-30.0, "V"))
FST_TYPES: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI")
MIN_SKIN_FRACTION = 0.25
BORDER = 0.15
#: Above this share of near-black border pixels the image is a masked crop (PAD-style): no skin to use.
MAX_BACKGROUND_FRACTION = 0.5
_ANALYSIS_SIDE = 256


def ita_to_fst(ita: float) -> str:
    for bound, fst in ITA_BANDS:
        if ita > bound:
            return fst
    return "VI"


_C = np.arange(256, dtype=np.float64) / 255.0
_SRGB_TO_LINEAR = np.where(_C <= 0.04045, _C / 12.92, ((_C + 0.055) / 1.055) ** 2.4)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB uint8 (..., 3) -> CIELAB (..., 3) float64, D65 white, the CIE 1976 formulas."""
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8:
        lin = _SRGB_TO_LINEAR[arr]  # 256-entry table: same values, no per-pixel power
    else:
        c = arr.astype(np.float64) / 255.0
        lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array(
        [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
    )
    xyz = lin @ m.T
    white = np.array([0.95047, 1.0, 1.08883])
    t = xyz / white
    eps = (6.0 / 29.0) ** 3
    f = np.where(t > eps, np.cbrt(t), t / (3 * (6.0 / 29.0) ** 2) + 4.0 / 29.0)
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample (maximises between-class variance)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size == 0:
        raise ValueError("otsu_threshold needs at least one value")
    lo, hi = float(v.min()), float(v.max())
    if hi - lo < 1e-9:
        return lo
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = np.divide(m0, w0, out=np.zeros_like(m0), where=w0 > 0)
    mu1 = np.divide(m0[-1] - m0, w1, out=np.zeros_like(m0), where=w1 > 0)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between))])


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    if r <= 0:
        return x
    pad = np.pad(x, r, mode="edge")
    c = np.cumsum(np.cumsum(pad, axis=0), axis=1)
    c = np.pad(c, ((1, 0), (1, 0)))
    k = 2 * r + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s / (k * k)


def border_ring(shape: tuple[int, int], share: float = BORDER) -> np.ndarray:
    """The border ring: the outer ``share`` of each side, where skin usually surrounds the lesion."""
    h, w = shape
    bh, bw = max(1, int(round(h * share))), max(1, int(round(w * share)))
    ring = np.zeros((h, w), dtype=bool)
    ring[:bh, :] = ring[-bh:, :] = True
    ring[:, :bw] = ring[:, -bw:] = True
    return ring


def _downsample(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    step = max(1, int(np.ceil(max(h, w) / _ANALYSIS_SIDE)))
    return rgb[::step, ::step]


def lesion_skin_masks(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lab, lesion mask, skin mask) on a downsampled copy of ``rgb``.

    The lesion is the dark side of an Otsu split of blurred L* over non-background pixels; skin is
    the bright side inside the border ring. Also used for the saliency-in-lesion ratio.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected RGB (H, W, 3), got {rgb.shape}")
    small = _downsample(rgb)
    lab = srgb_to_lab(small)
    L = lab[..., 0]
    blurred = _box_blur(L, max(1, min(L.shape) // 64))
    background = (L < 12.0) | (small.max(axis=2) < 20)
    valid = ~background
    if valid.sum() < 16:
        empty = np.zeros(L.shape, dtype=bool)
        return lab, empty, empty
    t = otsu_threshold(blurred[valid])
    lesion = valid & (blurred < t)
    ring = border_ring(L.shape)
    specular = L > 97.0
    skin = ring & valid & ~lesion & ~specular & (lab[..., 2] > 0)
    return lab, lesion, skin


def estimate_skin_tone(rgb: np.ndarray, min_skin_fraction: float = MIN_SKIN_FRACTION) -> SkinToneEstimate:
    """Estimate FST from an RGB uint8 image.

    ``skin_fraction`` is the share of the border ring (outer 15% of each side) classified as skin.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("expected an RGB uint8 image (H, W, 3)")
    lab, _lesion, skin = lesion_skin_masks(rgb)
    ring = border_ring(skin.shape)
    frac = float(skin[ring].mean())
    small = _downsample(rgb)
    background = float(((lab[..., 0] < 12.0) | (small.max(axis=2) < 20))[ring].mean())
    if background > MAX_BACKGROUND_FRACTION:
        return SkinToneEstimate(
            fst="unknown", ita=None, skin_fraction=frac,
            reason=f"the image border is {background:.0%} black: a masked or background-removed crop shows "
                   "no surrounding skin to estimate from",
        )
    if frac < min_skin_fraction:
        return SkinToneEstimate(
            fst="unknown", ita=None, skin_fraction=frac,
            reason=f"too little skin visible around the lesion ({frac:.0%} of the image border; needs "
                   f"{min_skin_fraction:.0%}); a masked or tightly cropped image cannot be estimated",
        )
    L = lab[..., 0][skin]
    b = lab[..., 2][skin]
    ita = float(np.degrees(np.arctan2(np.median(L) - 50.0, np.median(b))))
    return SkinToneEstimate(fst=ita_to_fst(ita), ita=ita, skin_fraction=frac)
