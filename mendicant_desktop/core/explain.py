"""Explanation analysis: saliency-in-lesion ratio, per-skin-type aggregation and occlusion sensitivity.

numpy only (plus the engine). Two explanations live here:

* **Saliency-in-lesion ratio** of a Grad-CAM map: the share of the map's mass that falls inside the lesion
  mask, ``sum(cam * lesion) / sum(cam)`` with the map bilinearly upsampled to the mask. The mask comes from
  :func:`lesion_mask`: the non-black region of a masked crop (PAD-UFES-20 style, where everything but the
  lesion was multiplied by zero), otherwise the lesion side of :func:`core.skintone.lesion_skin_masks`
  (dermoscopy and clinical photos). A map spread uniformly over the image scores the lesion's *area share*
  (``lesion_fraction``), so a ratio is only meaningful next to that chance level; both are reported.
* **Occlusion sensitivity** (:class:`OcclusionSensitivity`): model-agnostic. A patch filled with the image's
  mean colour slides over the model input; each position costs one forward pass (batched through
  :meth:`Engine.run`, raw ONNX Runtime), and the drop of the target score (malignancy or one class) is
  spread back over the pixels the patch covered.

Per-skin-type aggregation (:func:`summarize_saliency`) gives, per Fitzpatrick group, the mean and the
distribution of the ratio plus the mean Grad-CAM map; the audit report renders them.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import CancelledError
from .metadata import Metadata, encode_metadata
from .preprocess import preprocess
from .results import MALIGNANT_CLASSES
from .saliency import upsample_cam
from .skintone import MAX_BACKGROUND_FRACTION, border_ring, lesion_skin_masks

__all__ = [
    "BACKGROUND_L",
    "HIST_BINS",
    "MIN_LESION_FRACTION",
    "MAX_LESION_FRACTION",
    "GroupSaliency",
    "OcclusionResult",
    "OcclusionSensitivity",
    "SaliencyInLesion",
    "lesion_mask",
    "lesion_masks",
    "mean_cam",
    "occlusion_positions",
    "region_ranking",
    "saliency_in_lesion",
    "summarize_saliency",
    "to_uint8",
]

#: CIELAB L* below which a pixel is background (masked-out or dermoscope vignette), as in core.skintone.
BACKGROUND_L = 12.0
#: A lesion mask covering less than this share of the image is treated as not found.
MIN_LESION_FRACTION = 0.002
#: ... or more than this share: the split found no lesion/skin contrast, the ratio would say nothing.
MAX_LESION_FRACTION = 0.95
#: Bins of the per-group ratio histogram over [0, 1].
HIST_BINS = 10

ProgressFn = Callable[[int, int], None]
CancelFlag = threading.Event | Callable[[], bool] | None


def to_uint8(image: np.ndarray) -> np.ndarray:
    """An RGB image (uint8, or float 0..255 such as the model input) as uint8 (H, W, 3)."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype == np.uint8:
        return a
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Saliency-in-lesion ratio
# --------------------------------------------------------------------------------------------------


def lesion_masks(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, str]:
    """``(lesion, background, kind)`` of an RGB image: boolean masks on the engine's analysis copy (longest
    side <= 256 px, so a 254x254 model input keeps its resolution) and how the lesion was found.

    ``background`` is near-black (L* < 12: masked-out pixels or a dermoscope's vignette). ``kind`` is
    ``'masked-crop'`` when most of the image border is background (a background-removed crop such as
    PAD-UFES-20's: the lesion is the non-black region) and ``'lesion-split'`` otherwise (the lesion side of
    :func:`core.skintone.lesion_skin_masks`, which leaves the background out).
    """
    rgb = to_uint8(image)
    lab, lesion, _skin = lesion_skin_masks(rgb)
    background = lab[..., 0] < BACKGROUND_L
    ring = border_ring(background.shape)
    if float(background[ring].mean()) > MAX_BACKGROUND_FRACTION:
        return ~background, background, "masked-crop"
    return lesion, background, "lesion-split"


def lesion_mask(image: np.ndarray) -> tuple[np.ndarray, str]:
    """The lesion mask of an RGB image and how it was found (see :func:`lesion_masks`)."""
    lesion, _background, kind = lesion_masks(image)
    return lesion, kind


@dataclass(frozen=True)
class SaliencyInLesion:
    """One image's saliency-in-lesion ratio. ``ratio`` is None when it cannot be computed (``reason``)."""

    ratio: float | None
    lesion_fraction: float | None
    mask_kind: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.ratio is not None

    def as_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "lesion_fraction": self.lesion_fraction, "mask_kind": self.mask_kind,
                "reason": self.reason}


def saliency_in_lesion(
    cam: np.ndarray | None,
    image: np.ndarray | None = None,
    *,
    mask: np.ndarray | None = None,
    mask_kind: str = "given",
) -> SaliencyInLesion:
    """Share of the Grad-CAM mass inside the lesion.

    ``cam`` is a (h, w) map >= 0 at any resolution (the engine's 8x8 map is fine); it is upsampled to the
    mask. Give either ``image`` (RGB, uint8 or float 0..255, in the same frame as the map, e.g. the model
    input) to find the mask with :func:`lesion_mask`, or a boolean ``mask`` directly.
    """
    if mask is None:
        if image is None:
            raise ValueError("give an image or a mask")
        mask, mask_kind = lesion_mask(image)
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    frac = float(mask.mean()) if mask.size else 0.0
    if cam is None:
        return SaliencyInLesion(None, frac, mask_kind, "no saliency map")
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2 or not np.all(np.isfinite(cam)):
        raise ValueError("cam must be a finite 2-D array")
    if frac < MIN_LESION_FRACTION:
        return SaliencyInLesion(None, frac, mask_kind, "no lesion found in the image")
    if frac > MAX_LESION_FRACTION:
        return SaliencyInLesion(None, frac, mask_kind, "the lesion mask covers the whole image")
    heat = np.maximum(cam, 0.0)
    if heat.max() > 0:
        heat = heat / heat.max()
    up = upsample_cam(heat, mask.shape) if heat.shape != mask.shape else heat
    total = float(up.sum(dtype=np.float64))
    if not total > 0:
        return SaliencyInLesion(None, frac, mask_kind, "the saliency map is empty (all zero)")
    inside = float(up[mask].sum(dtype=np.float64))
    return SaliencyInLesion(min(1.0, max(0.0, inside / total)), frac, mask_kind)


def mean_cam(cams: Iterable[np.ndarray], size: tuple[int, int] | None = None) -> np.ndarray | None:
    """Pixel-wise mean of maps (each upsampled to ``size``, default the first map's shape); None if none."""
    acc: np.ndarray | None = None
    n = 0
    for c in cams:
        c = np.asarray(c, dtype=np.float32)
        target = size or c.shape
        if c.shape != tuple(target):
            c = upsample_cam(c, tuple(target))
        acc = c.astype(np.float64) if acc is None else acc + c
        n += 1
    return None if acc is None else (acc / n).astype(np.float32)


@dataclass(frozen=True)
class GroupSaliency:
    """Saliency-in-lesion statistics of one group (ratios of the images where one could be computed)."""

    group: str
    n_images: int
    n: int  # images with a ratio
    mean: float
    sd: float
    median: float
    q1: float
    q3: float
    lesion_fraction_mean: float
    hist: tuple[int, ...]
    mask_kinds: dict[str, int] = field(default_factory=dict)
    mean_cam: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def lift(self) -> float:
        """Mean ratio over mean lesion area share: 1 = no more on the lesion than a uniform map."""
        if not (self.lesion_fraction_mean > 0) or math.isnan(self.mean):
            return float("nan")
        return self.mean / self.lesion_fraction_mean

    def to_dict(self) -> dict[str, Any]:
        def f(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else round(float(v), 6)

        return {
            "n_images": self.n_images, "n": self.n, "mean": f(self.mean), "sd": f(self.sd),
            "median": f(self.median), "q1": f(self.q1), "q3": f(self.q3),
            "lesion_fraction_mean": f(self.lesion_fraction_mean), "lift": f(self.lift),
            "hist": list(self.hist), "hist_edges": [round(i / HIST_BINS, 3) for i in range(HIST_BINS + 1)],
            "mask_kinds": dict(self.mask_kinds),
        }


def summarize_saliency(
    items: Sequence[SaliencyInLesion],
    groups: Sequence[str],
    cams: Sequence[np.ndarray | None] | None = None,
    *,
    order: Sequence[str] = ("I", "II", "III", "IV", "V", "VI", "unknown"),
    include_overall: bool = True,
) -> dict[str, GroupSaliency]:
    """Per-group statistics of the ratios (groups in ``order``, then ``'overall'``); absent groups omitted."""
    if len(items) != len(groups):
        raise ValueError(f"{len(items)} ratios but {len(groups)} groups")
    if cams is not None and len(cams) != len(items):
        raise ValueError(f"{len(items)} ratios but {len(cams)} maps")
    g = np.asarray(list(groups), dtype=object)
    names = [o for o in order if np.any(g == o)] + sorted({str(v) for v in g} - set(order))
    if include_overall and len(items):
        names.append("overall")
    out: dict[str, GroupSaliency] = {}
    for name in names:
        idx = np.arange(len(items)) if name == "overall" else np.flatnonzero(g == name)
        sel = [items[i] for i in idx]
        r = np.array([s.ratio for s in sel if s.ratio is not None], dtype=np.float64)
        lf = np.array([s.lesion_fraction for s in sel if s.ratio is not None], dtype=np.float64)
        kinds: dict[str, int] = {}
        for s in sel:
            kinds[s.mask_kind] = kinds.get(s.mask_kind, 0) + 1
        mc = None
        if cams is not None:
            mc = mean_cam(cams[i] for i in idx if cams[i] is not None)
        if r.size:
            q1, med, q3 = (float(v) for v in np.percentile(r, [25, 50, 75]))
            hist = np.histogram(r, bins=HIST_BINS, range=(0.0, 1.0))[0]
            stats = dict(mean=float(r.mean()), sd=float(r.std(ddof=1)) if r.size > 1 else float("nan"),
                         median=med, q1=q1, q3=q3, lesion_fraction_mean=float(lf.mean()))
        else:
            hist = np.zeros(HIST_BINS, dtype=np.int64)
            nan = float("nan")
            stats = dict(mean=nan, sd=nan, median=nan, q1=nan, q3=nan, lesion_fraction_mean=nan)
        out[name] = GroupSaliency(group=name, n_images=len(sel), n=int(r.size), hist=tuple(int(v) for v in hist),
                                  mask_kinds=kinds, mean_cam=mc, **stats)
    return out


# --------------------------------------------------------------------------------------------------
# Occlusion sensitivity
# --------------------------------------------------------------------------------------------------


class _RawModel(Protocol):
    input_size: tuple[int, int]
    class_names: tuple[str, ...]

    def run(self, x: np.ndarray, meta: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch start offsets along one axis: every ``stride``, plus a last one flush with the edge."""
    if patch < 1 or stride < 1:
        raise ValueError("patch and stride must be at least 1")
    if patch >= size:
        return [0]
    pos = list(range(0, size - patch + 1, stride))
    if pos[-1] != size - patch:
        pos.append(size - patch)
    return pos


@dataclass(frozen=True)
class OcclusionResult:
    """``heatmap`` (H, W) float32 at model-input resolution: the mean drop of the target score over the
    patches covering each pixel (negative where occluding *raised* the score). ``magnitude`` is the mean
    absolute change instead: how sensitive the score is to hiding each pixel, whatever the direction.
    ``grid`` holds the drop per patch position (rows = y offsets ``ys``, cols = x offsets ``xs``)."""

    heatmap: np.ndarray = field(repr=False)
    magnitude: np.ndarray = field(repr=False)
    grid: np.ndarray = field(repr=False)
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    base_score: float
    target: str
    patch: int
    stride: int
    n_passes: int
    seconds: float

    def normalized(self, kind: str = "drop") -> np.ndarray:
        """A map in [0, 1] for :func:`core.saliency.overlay`: the positive part of ``heatmap`` (``'drop'``,
        where hiding the region lowers the score) or ``magnitude`` (``'magnitude'``), scaled by its peak."""
        if kind not in ("drop", "magnitude"):
            raise ValueError(f"kind must be 'drop' or 'magnitude', got {kind!r}")
        pos = np.maximum(self.heatmap if kind == "drop" else self.magnitude, 0.0)
        peak = float(pos.max())
        return (pos / peak).astype(np.float32) if peak > 0 else np.zeros_like(pos, dtype=np.float32)


def _is_cancelled(cancel: CancelFlag) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


class OcclusionSensitivity:
    """Occlusion sensitivity with batched raw forward passes (:meth:`Engine.run`).

    ``patch``/``stride`` are in model-input pixels (254x254 for the real model); the defaults (32/16)
    give 15 x 15 = 225 positions. ``baseline`` is the fill of the patch: ``'mean'`` (the image's mean
    colour, default) or a number 0..255. Works with anything that has ``run(x, meta10)``,
    ``input_size`` and ``class_names`` (an :class:`Engine`).
    """

    def __init__(
        self,
        engine: _RawModel,
        *,
        patch: int = 32,
        stride: int = 16,
        batch_size: int = 16,
        baseline: str | float = "mean",
    ) -> None:
        if patch < 1 or stride < 1 or batch_size < 1:
            raise ValueError("patch, stride and batch_size must be at least 1")
        if stride > patch:
            raise ValueError(f"stride {stride} > patch {patch} would leave pixels never occluded")
        if not (baseline == "mean" or isinstance(baseline, (int, float))):
            raise ValueError(f"baseline must be 'mean' or a number, got {baseline!r}")
        self.engine = engine
        self.patch = int(patch)
        self.stride = int(stride)
        self.batch_size = int(batch_size)
        self.baseline = baseline
        self.input_size = tuple(engine.input_size)

    def n_passes(self) -> int:
        """Forward passes per image: one per patch position, plus the unoccluded image."""
        h, w = self.input_size
        return len(occlusion_positions(h, self.patch, self.stride)) * len(
            occlusion_positions(w, self.patch, self.stride)) + 1

    def _score_fn(self, target: str, base_probs: np.ndarray) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
        names = list(self.engine.class_names)
        if target == "malignancy":
            idx = [names.index(c) for c in MALIGNANT_CLASSES]
            return (lambda p: p[:, idx].sum(axis=1)), "malignancy"
        if target == "top":
            j = int(np.argmax(base_probs))
            return (lambda p: p[:, j]), names[j]
        if target in names:
            j = names.index(target)
            return (lambda p: p[:, j]), target
        raise ValueError(f"unknown occlusion target {target!r}; use malignancy, top or one of {', '.join(names)}")

    def _input(self, image: np.ndarray) -> np.ndarray:
        a = np.asarray(image)
        if a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
        if a.dtype != np.uint8 and a.shape[:2] == self.input_size:
            return np.ascontiguousarray(a, dtype=np.float32)  # already the model input
        return preprocess(to_uint8(a), self.input_size)

    def explain(
        self,
        image: np.ndarray,
        metadata: Metadata | None = None,
        *,
        target: str = "malignancy",
        progress: ProgressFn | None = None,
        cancel: CancelFlag = None,
    ) -> OcclusionResult:
        """Occlusion map of one image.

        ``image``: RGB uint8 of any size (preprocessed here), or the float32 model input (H, W, 3).
        ``target``: ``'malignancy'`` (p(mel)+p(bcc)+p(akiec)), ``'top'`` (the unoccluded top class) or a
        class code. ``progress(done, total)`` is called after each batch (passes done, passes in all);
        ``cancel`` (an Event or a callable) is checked before each batch and raises :class:`CancelledError`.
        """
        import time

        t0 = time.perf_counter()
        x = self._input(image)
        h, w = self.input_size
        meta = encode_metadata(metadata)[None, :]
        ys = occlusion_positions(h, self.patch, self.stride)
        xs = occlusion_positions(w, self.patch, self.stride)
        positions = [(y, x0) for y in ys for x0 in xs]
        total = len(positions) + 1
        if _is_cancelled(cancel):
            raise CancelledError("occlusion cancelled")
        base_probs, _ = self.engine.run(x[None], meta)
        score, target_name = self._score_fn(target, base_probs[0])
        base = float(score(base_probs)[0])
        if progress is not None:
            progress(1, total)
        fill = x.reshape(-1, 3).mean(axis=0) if self.baseline == "mean" else np.full(3, float(self.baseline))
        fill = fill.astype(np.float32)
        ph, pw = min(self.patch, h), min(self.patch, w)
        drops = np.empty(len(positions), dtype=np.float64)
        done = 1
        for s in range(0, len(positions), self.batch_size):
            if _is_cancelled(cancel):
                raise CancelledError("occlusion cancelled")
            chunk = positions[s : s + self.batch_size]
            xb = np.repeat(x[None], len(chunk), axis=0)
            for k, (y, x0) in enumerate(chunk):
                xb[k, y : y + ph, x0 : x0 + pw, :] = fill
            probs, _ = self.engine.run(xb, np.repeat(meta, len(chunk), axis=0))
            drops[s : s + len(chunk)] = base - score(probs)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
        acc = np.zeros((h, w), dtype=np.float64)
        mag = np.zeros((h, w), dtype=np.float64)
        cnt = np.zeros((h, w), dtype=np.float64)
        for d, (y, x0) in zip(drops, positions, strict=True):
            acc[y : y + ph, x0 : x0 + pw] += d
            mag[y : y + ph, x0 : x0 + pw] += abs(d)
            cnt[y : y + ph, x0 : x0 + pw] += 1
        cnt = np.maximum(cnt, 1)
        return OcclusionResult(
            heatmap=(acc / cnt).astype(np.float32), magnitude=(mag / cnt).astype(np.float32), grid=drops.reshape(len(ys), len(xs)).astype(np.float32), ys=tuple(ys), xs=tuple(xs),
            base_score=base, target=target_name, patch=self.patch, stride=self.stride, n_passes=total,
            seconds=time.perf_counter() - t0,
        )

    __call__ = explain


def region_ranking(heatmap: np.ndarray, mask: np.ndarray, *, exclude: np.ndarray | None = None) -> float:
    """Mean of ``heatmap`` inside ``mask`` minus its mean outside (``exclude`` pixels ignored); the map is
    resized to the mask first. Positive = the map ranks the masked region (the lesion) above the rest."""
    heat = np.asarray(heatmap, dtype=np.float32)
    mask = np.asarray(mask, dtype=bool)
    if heat.shape != mask.shape:
        lo, hi = float(heat.min()), float(heat.max())
        span = hi - lo if hi > lo else 1.0
        heat = upsample_cam((heat - lo) / span, mask.shape) * span + lo
    keep = np.ones(mask.shape, bool) if exclude is None else ~np.asarray(exclude, dtype=bool)
    inside, outside = mask & keep, ~mask & keep
    if not inside.any() or not outside.any():
        return float("nan")
    return float(heat[inside].mean() - heat[outside].mean())
