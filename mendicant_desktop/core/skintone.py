"""Skin-type estimate: Fitzpatrick I-VI from colour statistics of the visible skin, with a confidence.

A proxy for the clinician-assigned Fitzpatrick type: callers show it as "estimated" and let the user
override it. Two steps, numpy only at run time:

1. :func:`skin_features` - percentiles of CIELAB L*, a*, b*, ITA, hue, chroma, log(R/G), log(G/B) and
   saturation over three pixel sets (the whole frame, the skin-coloured pixels, the skin-coloured pixels of the
   border ring, where skin usually surrounds a central lesion), plus the shares of those sets. Percentiles make
   the statistics robust to the lesion and to background that slips into a set.
2. A multinomial logistic regression on those features (:class:`SkinToneModel`), fitted by
   ``python -m compression.skintone_fit`` on the train split of Fitzpatrick17k (grouped by ``duplicate_group``)
   and stored in ``resources/skintone/``. The estimate is the posterior mean rounded to a type (an ordinal
   read of the posterior: it keeps dark skin from jumping to I-II when the classes near it share the mass).

It answers "unknown", with a one-line reason, when the border is mostly black (a masked crop: PAD), when too
little skin-coloured area is visible, or when the posterior is too spread ("too mixed": the colours fit
several distant types). ITA = arctan((L* - 50) / b*) of the median skin pixel is still reported beside it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .results import SkinToneEstimate

#: The classic ITA bands (Chardon et al.) - kept for reference and for callers that show the ITA; the estimate
#: itself comes from the learned model. (lower ITA bound, type), checked in order: > 55 I, 41-55 II, 28-41 III, 10-28 IV, -30-10 V, < -30 VI.
ITA_BANDS: tuple[tuple[float, str], ...] = ((55.0, "I"), (41.0, "II"), (28.0, "III"), (10.0, "IV"), (-30.0, "V"))
FST_TYPES: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI")
#: The old ITA rule's threshold (share of the border ring that must be skin); the learned model carries its own.
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



# ---------------------------------------------------------------------------------------------------------
# Learned estimate
# ---------------------------------------------------------------------------------------------------------

#: Bumped whenever :func:`skin_features` changes: a stored model or a feature cache of another version is refused.
FEATURE_VERSION = "colour-stats-v1"
PERCENTILES: tuple[int, ...] = (5, 10, 25, 50, 75, 90, 95)
CHANNELS: tuple[str, ...] = ("L", "a", "b", "ita", "hue", "chroma", "log_rg", "log_gb", "sat")
REGIONS: tuple[str, ...] = ("frame", "skin", "ring_skin")
EXTRA_FEATURES: tuple[str, ...] = (
    "valid_share", "skin_share", "ring_skin_share", "ring_background_share", "frame_L_p99", "skin_L_minus_frame_p99",
)
#: A pixel whose every channel is below this is mask-black (PAD's crops: 0 plus JPEG noise). Photos on a black
#: cloth are darker than skin but not this dark (every Fitzpatrick17k photo has < 50% of its border ring below it;
#: every PAD crop > 65%); the wider near-black test (L* < 12) also caught dark skin in dim photos.
MASK_BLACK = 10
#: Fewer pixels than this in a set: the set falls back to the next wider one (statistics of 8 pixels are noise).
_MIN_SET = 8


def feature_names() -> tuple[str, ...]:
    """Names of :func:`skin_features`' vector, in order (stored with the model and checked on load)."""
    names = [f"{r}.{c}.p{q}" for r in REGIONS for c in CHANNELS for q in PERCENTILES]
    return tuple(names) + EXTRA_FEATURES


@dataclass(frozen=True)
class SkinFeatures:
    """The feature vector and the shares the unknown rules read."""

    vector: np.ndarray
    skin_fraction: float  # share of the border ring that is skin-coloured
    skin_share: float  # share of the whole frame that is skin-coloured
    background_fraction: float  # share of the border ring that is near-black (L* < 12 or every channel < 20)
    ita: float | None  # ITA of the median skin-coloured pixel (degrees), None when there is none
    masked_fraction: float = 0.0  # share of the border ring that is mask-black (every channel < MASK_BLACK)


def skin_colour_mask(lab: np.ndarray, rgb_small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valid, skin-coloured) masks: valid excludes near-black background and specular highlights; skin-coloured
    keeps warm hues (10-100 deg in a*b*, i.e. red-orange to yellow) with some chroma, which every skin type has and
    white sheets, grey instruments, blue clothing and black masks do not."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    background = (L < 12.0) | (rgb_small.max(axis=2) < 20)
    valid = ~background & (L < 97.0)
    hue = np.degrees(np.arctan2(b, a))
    chroma = np.hypot(a, b)
    skin = valid & (a > -2.0) & (b > 0.0) & (hue > 10.0) & (hue < 100.0) & (chroma > 5.0)
    return valid, skin


def skin_features(rgb: np.ndarray) -> SkinFeatures:
    """Colour statistics of an RGB uint8 image (see the module docstring). About 20 ms at the 256-px analysis size."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError("expected an RGB uint8 image (H, W, 3)")
    small = _downsample(rgb)
    lab = srgb_to_lab(small)
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    f = small.astype(np.float64) + 1.0
    mx = f.max(axis=2)
    channels = {
        "L": L, "a": a, "b": b,
        "ita": np.degrees(np.arctan2(L - 50.0, b)),
        "hue": np.degrees(np.arctan2(b, a)),
        "chroma": np.hypot(a, b),
        "log_rg": np.log(f[..., 0] / f[..., 1]),
        "log_gb": np.log(f[..., 1] / f[..., 2]),
        "sat": (mx - f.min(axis=2)) / mx,
    }
    valid, skin = skin_colour_mask(lab, small)
    ring = border_ring(L.shape)
    background = ~valid & (L < 97.0)  # near-black only (specular highlights are not background)
    frame = np.ones(L.shape, dtype=bool)
    sets = {"frame": frame, "skin": skin, "ring_skin": ring & skin}
    out: list[float] = []
    for region in REGIONS:
        m = sets[region]
        if m.sum() < _MIN_SET:
            m = valid if valid.sum() >= _MIN_SET else frame
        for c in CHANNELS:
            out.extend(np.percentile(channels[c][m], PERCENTILES).tolist())
    frame_p99 = float(np.percentile(L, 99))
    skin_median_L = float(np.median(L[skin])) if skin.any() else 0.0
    out += [float(valid.mean()), float(skin.mean()), float(skin[ring].mean()), float(background[ring].mean()),
            frame_p99, skin_median_L - frame_p99 if skin.any() else 0.0]
    ita = float(np.degrees(np.arctan2(np.median(L[skin]) - 50.0, np.median(b[skin])))) if skin.any() else None
    masked = small.max(axis=2) < MASK_BLACK
    return SkinFeatures(
        vector=np.asarray(out, dtype=np.float64), skin_fraction=float(skin[ring].mean()),
        skin_share=float(skin.mean()), background_fraction=float(background[ring].mean()), ita=ita,
        masked_fraction=float(masked[ring].mean()),
    )


def default_model_path() -> Path:
    from .bundle import resources_dir

    return resources_dir() / "skintone" / "fst_colour_logreg.json"


@dataclass(frozen=True, eq=False)
class SkinToneModel:
    """Standardise -> multinomial logistic regression -> posterior over I..VI (see compression.skintone_fit)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (6, n_features)
    intercept: np.ndarray  # (6,)
    max_spread: float  # posterior standard deviation (in types) above which the answer is "unknown"
    min_skin_fraction: float
    min_skin_share: float
    max_background_fraction: float
    provenance: dict

    @classmethod
    def load(cls, path: Path | str | None = None) -> SkinToneModel:
        p = Path(path) if path is not None else default_model_path()
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read the skin-type model {p}: {exc}") from exc
        if d.get("feature_version") != FEATURE_VERSION or tuple(d.get("feature_names", ())) != feature_names():
            raise ValueError(f"{p} was fitted on features {d.get('feature_version')!r}, this code computes "
                             f"{FEATURE_VERSION!r}: refit it with python -m compression.skintone_fit")
        if tuple(d.get("classes", ())) != FST_TYPES:
            raise ValueError(f"{p}: classes must be {FST_TYPES}")
        rules = d["unknown_rules"]
        return cls(
            mean=np.asarray(d["mean"], float), scale=np.asarray(d["scale"], float),
            coef=np.asarray(d["coef"], float), intercept=np.asarray(d["intercept"], float),
            max_spread=float(rules["max_spread"]), min_skin_fraction=float(rules["min_skin_fraction"]),
            min_skin_share=float(rules["min_skin_share"]),
            max_background_fraction=float(rules["max_background_fraction"]), provenance=d.get("provenance", {}),
        )

    def posterior(self, vector: np.ndarray) -> np.ndarray:
        z = self.coef @ ((vector - self.mean) / self.scale) + self.intercept
        e = np.exp(z - z.max())
        return e / e.sum()


_MODEL: SkinToneModel | None = None
_MODEL_LOCK = threading.Lock()


def default_model() -> SkinToneModel:
    """The bundled model, loaded once (thread-safe: the batch decode pool calls this from several threads)."""
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            _MODEL = SkinToneModel.load()
        return _MODEL


def decide(posterior: np.ndarray) -> tuple[int, float, float, float]:
    """(type index 0..5, p(exact), p(within one type), posterior spread in types) from a posterior over I..VI.

    The type is the posterior mean rounded (an ordinal read), not the argmax.
    """
    idx = np.arange(6, dtype=np.float64)
    mean = float(posterior @ idx)
    k = int(np.clip(np.rint(mean), 0, 5))
    spread = float(np.sqrt(posterior @ (idx - mean) ** 2))
    return k, float(posterior[k]), float(posterior[max(0, k - 1): k + 2].sum()), spread


def estimate_from_features(feats: SkinFeatures, model: SkinToneModel, min_skin_fraction: float | None = None
                           ) -> SkinToneEstimate:
    """The estimate (or "unknown" with its reason) for precomputed features - the benchmark's entry point."""
    min_frac = model.min_skin_fraction if min_skin_fraction is None else min_skin_fraction
    base = dict(skin_fraction=feats.skin_fraction)
    if feats.masked_fraction > model.max_background_fraction:
        return SkinToneEstimate(
            fst="unknown", ita=None, **base,
            reason=f"the image border is {feats.masked_fraction:.0%} black: a masked or background-removed "
                   "crop shows no surrounding skin to estimate from",
        )
    if feats.skin_fraction < min_frac or feats.skin_share < model.min_skin_share:
        return SkinToneEstimate(
            fst="unknown", ita=None, **base,
            reason=f"too little skin visible ({feats.skin_fraction:.0%} of the image border and "
                   f"{feats.skin_share:.0%} of the image look like skin; needs {min_frac:.0%} and "
                   f"{model.min_skin_share:.0%}); a masked or tightly cropped image cannot be estimated",
        )
    post = model.posterior(feats.vector)
    k, p_exact, p_within, spread = decide(post)
    probs = tuple(float(p) for p in post)
    if spread > model.max_spread:
        lo, hi = FST_TYPES[int(np.argmax(post > 0.15))], FST_TYPES[5 - int(np.argmax(post[::-1] > 0.15))]
        return SkinToneEstimate(
            fst="unknown", ita=None, **base, probabilities=probs,
            reason=f"the visible skin is too mixed to call: its colours fit types {lo} to {hi} about equally "
                   "(lighting, shadow or a large lesion)",
        )
    return SkinToneEstimate(fst=FST_TYPES[k], ita=feats.ita, **base, confidence=p_exact,
                            confidence_within_one=p_within, probabilities=probs)


def estimate_skin_tone(rgb: np.ndarray, min_skin_fraction: float | None = None,
                       model: SkinToneModel | None = None) -> SkinToneEstimate:
    """Estimate the Fitzpatrick type of an RGB uint8 image, with a confidence, or "unknown" with a reason.

    ``skin_fraction`` is the share of the border ring (outer 15% of each side) that is skin-coloured.
    """
    feats = skin_features(rgb)
    return estimate_from_features(feats, model or default_model(), min_skin_fraction)
