"""GradientSHAP vs the runtime Grad-CAM, per Fitzpatrick group: the check that the cheap explanation agrees.

The app explains a score with Grad-CAM computed in numpy from the network's last feature map and the exact
gradient of its small head (:mod:`mendicant_desktop.core.saliency`). That is cheap but model-specific. Here
Captum's ``GradientShap`` (expected gradients, a SHAP-family method) is run on the torch model for a small
sample of validation images per skin type, its per-pixel attributions are summed over the colour channels
and average-pooled onto the feature grid (8x8 for the 254x254 input), and the Spearman rank correlation with
the Grad-CAM map of the same model, image and target is reported per group.

Both explain the **malignancy score** p(mel)+p(bcc)+p(akiec) of the same torch model (the reference teacher
by default, or a saved student); the Grad-CAM side uses the app's numpy code on the torch model's features
and head arrays, i.e. exactly what the runtime computes from the exported ONNX + head.npz.

Run: ``python -m compression.explain_shap [--per-group 8] [--n-samples 4] [--student PATH] [--out DIR]``.
It writes ``explain_shap.json`` and ``explain_shap.md`` (a section for the compression report) into
``--out`` (default ``<run dir>/report``). With the defaults it takes a few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mendicant_desktop.core.results import MALIGNANT_INDICES
from mendicant_desktop.core.saliency import (
    GradCAM,
    head_forward,
    probability_score_weights,
    score_gradients,
    softmax,
)

from .reference import ReferenceNet, head_arrays

__all__ = [
    "GROUPS",
    "Sample",
    "GroupStats",
    "ShapComparison",
    "gradcam_maps",
    "gradient_shap_maps",
    "pool_to_grid",
    "rankdata",
    "spearman",
    "compare",
    "select_samples",
    "to_markdown",
    "main",
]

GROUPS: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI", "unknown")
MALIGNANT_IDX: tuple[int, ...] = MALIGNANT_INDICES


# --------------------------------------------------------------------------------------------------
# Numerics
# --------------------------------------------------------------------------------------------------


def rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks with ties averaged (scipy.stats.rankdata 'average')."""
    a = np.asarray(a, dtype=np.float64).ravel()
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    n = a.size
    ranks = np.empty(n, dtype=np.float64)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and s[j + 1] == s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two equally sized arrays; nan when either is constant."""
    ra, rb = rankdata(a), rankdata(b)
    if ra.size != rb.size:
        raise ValueError(f"sizes differ: {ra.size} vs {rb.size}")
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def pool_to_grid(maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Average-pool (N, H, W) maps onto a (h, w) grid with adaptive bins (torch's adaptive_avg_pool2d)."""
    maps = np.asarray(maps, dtype=np.float64)
    n, hh, ww = maps.shape
    h, w = grid
    out = np.empty((n, h, w), dtype=np.float64)
    for i in range(h):
        y0, y1 = (i * hh) // h, -((-(i + 1) * hh) // h)
        for j in range(w):
            x0, x1 = (j * ww) // w, -((-(j + 1) * ww) // w)
            out[:, i, j] = maps[:, y0:y1, x0:x1].mean(axis=(1, 2))
    return out


def _malignancy(model: ReferenceNet) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    idx = list(MALIGNANT_IDX)

    def f(image: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model.logits(image, meta), dim=1)[:, idx].sum(dim=1)

    return f


def gradcam_maps(model: ReferenceNet, images: np.ndarray, metas: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """The runtime malignancy Grad-CAM (N, h, w) in [0, 1]: the app's numpy code on the torch features."""
    head = head_arrays(model.head)
    cam = GradCAM()
    out = []
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[s : s + batch_size], dtype=np.float32))
            m = np.ascontiguousarray(metas[s : s + batch_size], dtype=np.float32)
            feats = model.features(x).numpy()
            pooled = feats.mean(axis=(2, 3), dtype=np.float64).astype(np.float32)
            hp = head_forward(head, pooled, m)
            weights = probability_score_weights(softmax(hp.logits), list(MALIGNANT_IDX))
            grads = score_gradients(head, hp, weights.astype(np.float32))
            out.append(cam(feats, grads))
    return np.concatenate(out, axis=0)


def gradient_shap_maps(
    model: ReferenceNet,
    images: np.ndarray,
    metas: np.ndarray,
    *,
    n_samples: int = 4,
    stdevs: float = 10.0,
    baselines: np.ndarray | None = None,
    seed: int = 0,
) -> np.ndarray:
    """GradientSHAP attributions of the malignancy score w.r.t. the image, summed over channels: (N, H, W).

    ``baselines`` (B, H, W, 3) in 0..255 default to black, mid-grey and the sample's mean colour; ``stdevs``
    is the SmoothGrad-style input noise in 0..255 units. One image at a time (``n_samples`` passes each).
    """
    from captum.attr import GradientShap

    images = np.ascontiguousarray(images, dtype=np.float32)
    if baselines is None:
        mean = images.reshape(-1, 3).mean(axis=0)
        shape = images.shape[1:]
        baselines = np.stack([np.zeros(shape, np.float32), np.full(shape, 127.5, np.float32),
                              np.broadcast_to(mean, shape).astype(np.float32)])
    base = torch.from_numpy(np.ascontiguousarray(baselines, dtype=np.float32))
    gs = GradientShap(_malignancy(model))
    out = []
    torch.manual_seed(seed)
    for i in range(len(images)):
        x = torch.from_numpy(images[i : i + 1].copy()).requires_grad_(True)
        m = torch.from_numpy(np.ascontiguousarray(metas[i : i + 1], dtype=np.float32))
        attr = gs.attribute(x, baselines=base, n_samples=n_samples, stdevs=stdevs, additional_forward_args=(m,))
        out.append(attr.detach().sum(dim=-1).numpy()[0])
    return np.stack(out)


# --------------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    image: str
    group: str
    fst_source: str  # 'label' | 'estimated'
    x: np.ndarray  # (H, W, 3) float32 0..255, core.preprocess output
    meta: np.ndarray  # (10,) float32


@dataclass(frozen=True)
class GroupStats:
    group: str
    n: int
    rho_mean: float
    rho_median: float
    rho_min: float
    rho_max: float
    rho_abs_mean: float

    def to_dict(self) -> dict[str, Any]:
        def f(v: float) -> float | None:
            return None if not math.isfinite(v) else round(float(v), 4)

        return {"n": self.n, "rho_mean": f(self.rho_mean), "rho_median": f(self.rho_median),
                "rho_min": f(self.rho_min), "rho_max": f(self.rho_max), "rho_abs_mean": f(self.rho_abs_mean)}


@dataclass
class ShapComparison:
    groups: dict[str, GroupStats]
    overall: GroupStats
    per_image: list[dict[str, Any]]
    grid: tuple[int, int]
    n_samples: int
    stdevs: float
    seconds: float
    model: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "captum.GradientShap on the malignancy score vs runtime Grad-CAM (malignancy)",
            "model": self.model, "grid": list(self.grid), "n_samples": self.n_samples, "stdevs": self.stdevs,
            "baselines": "black, mid-grey, sample mean colour", "seconds": round(self.seconds, 1),
            "overall": self.overall.to_dict(), "groups": {k: v.to_dict() for k, v in self.groups.items()},
            "images": self.per_image,
        }


def _stats(group: str, rho: Sequence[float], rho_abs: Sequence[float]) -> GroupStats:
    r = np.array([v for v in rho if math.isfinite(v)], dtype=np.float64)
    ra = np.array([v for v in rho_abs if math.isfinite(v)], dtype=np.float64)
    nan = float("nan")
    if not r.size:
        return GroupStats(group, len(rho), nan, nan, nan, nan, float(ra.mean()) if ra.size else nan)
    return GroupStats(group, len(rho), float(r.mean()), float(np.median(r)), float(r.min()), float(r.max()),
                      float(ra.mean()) if ra.size else nan)


def compare(
    model: ReferenceNet,
    samples: Sequence[Sample],
    *,
    n_samples: int = 4,
    stdevs: float = 10.0,
    seed: int = 0,
    model_name: str = "",
    log: Callable[[str], None] | None = None,
) -> ShapComparison:
    """Spearman correlation between pooled GradientSHAP and Grad-CAM for each sample, summarised per group.

    ``rho`` uses the signed channel-summed attribution (evidence *for* malignancy, as Grad-CAM shows);
    ``rho_abs`` its magnitude (where the attribution is large either way).
    """
    t0 = time.perf_counter()
    model = model.eval()
    if not samples:
        raise ValueError("no samples to compare")
    x = np.stack([s.x for s in samples]).astype(np.float32)
    m = np.stack([s.meta for s in samples]).astype(np.float32)
    cams = gradcam_maps(model, x, m)
    grid = cams.shape[1:]
    per_image: list[dict[str, Any]] = []
    for i, s in enumerate(samples):
        shap = gradient_shap_maps(model, x[i : i + 1], m[i : i + 1], n_samples=n_samples, stdevs=stdevs,
                                  seed=seed + i)
        pooled = pool_to_grid(shap, grid)[0]
        rho = spearman(pooled, cams[i])
        rho_abs = spearman(np.abs(pooled), cams[i])
        per_image.append({"image": s.image, "group": s.group, "fst_source": s.fst_source,
                          "rho": None if not math.isfinite(rho) else round(rho, 4),
                          "rho_abs": None if not math.isfinite(rho_abs) else round(rho_abs, 4)})
        if log is not None:
            log(f"  [{i + 1}/{len(samples)}] {s.group:>7} {s.image}: rho {rho:+.3f} (|shap| {rho_abs:+.3f})")

    def vals(rows: list[dict[str, Any]], key: str) -> list[float]:
        return [float("nan") if r[key] is None else float(r[key]) for r in rows]

    groups = {}
    for g in [*GROUPS, *sorted({s.group for s in samples} - set(GROUPS))]:
        rows = [r for r in per_image if r["group"] == g]
        if rows:
            groups[g] = _stats(g, vals(rows, "rho"), vals(rows, "rho_abs"))
    overall = _stats("overall", vals(per_image, "rho"), vals(per_image, "rho_abs"))
    return ShapComparison(groups, overall, per_image, (int(grid[0]), int(grid[1])), n_samples, stdevs,
                          time.perf_counter() - t0, model_name)


def to_markdown(c: ShapComparison) -> str:
    """The compression report's section."""

    def f(v: float) -> str:
        return f"{v:+.2f}" if math.isfinite(v) else "n/a"

    lines = [
        "## Explanation check: GradientSHAP vs runtime Grad-CAM",
        "",
        f"Model: {c.model or 'torch model'}. For each sampled validation image, Captum `GradientShap` "
        f"({c.n_samples} samples, input noise sd {c.stdevs:g}/255, baselines black / grey / mean colour) explains the "
        f"malignancy score; its attributions, summed over colour channels and average-pooled to the "
        f"{c.grid[0]}x{c.grid[1]} feature grid, are rank-correlated (Spearman) with the runtime Grad-CAM of the "
        "same score. rho near +1: the cheap runtime map ranks regions as the SHAP-family method does; near 0: "
        "they disagree. Skin types are clinician labels (PAD) or ITA estimates (ISIC).",
        "",
        "| FST | n | mean rho | median | min | max | mean rho vs abs(SHAP) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for g, s in [*c.groups.items(), ("all", c.overall)]:
        lines.append(f"| {g} | {s.n} | {f(s.rho_mean)} | {f(s.rho_median)} | {f(s.rho_min)} | {f(s.rho_max)} | "
                     f"{f(s.rho_abs_mean)} |")
    lines += ["", f"Samples are small (a few images per group; {c.seconds / 60:.1f} min on CPU): read the per-group "
              "means as a sanity check of agreement, not as a fairness statistic.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Validation sample
# --------------------------------------------------------------------------------------------------


def select_samples(per_group: int, *, seed: int = 0, cfg: Any = None,
                   groups: Sequence[str] = GROUPS) -> list[Sample]:
    """Up to ``per_group`` validation images per skin-type group (the compression split of ../shared/data).

    PAD images use their clinician FST; unlabelled PAD and ISIC ``external`` images get the engine's ITA
    estimate (computed only while a group still needs images). Deterministic in (config, seed).
    """
    from mendicant_desktop.core.metadata import encode_metadata
    from mendicant_desktop.core.preprocess import load_image, preprocess
    from mendicant_desktop.core.skintone import estimate_skin_tone

    from .config import load_config
    from .data import read_records, shared_data_dir, split_records

    cfg = cfg or load_config()
    data = shared_data_dir(cfg)
    records = read_records(data)
    split = split_records(records, cfg.data.isic_val_fraction, cfg.data.pad_val_fraction, cfg.run.seed)
    val = [r for r, s in zip(records, split, strict=True) if s == "val"]
    order = np.random.default_rng(seed).permutation(len(val))
    # Labelled images first, so scarce labelled groups are filled before estimates are spent.
    ranked = sorted(order, key=lambda i: 0 if val[i].fst_source == "label" else 1)
    want = {g: per_group for g in groups}
    out: list[Sample] = []
    for i in ranked:
        if not any(want.values()):
            break
        r = val[i]
        if r.fst_source == "label":
            if want.get(r.fst, 0) <= 0:
                continue
            rgb = load_image(data / r.relpath)
            group, src = r.fst, "label"
        else:
            rgb = load_image(data / r.relpath)
            group, src = estimate_skin_tone(rgb).fst, "estimated"
            if want.get(group, 0) <= 0:
                continue
        want[group] -= 1
        out.append(Sample(r.image, group, src, preprocess(rgb), encode_metadata(r.metadata)))
    return sorted(out, key=lambda s: (list(groups).index(s.group), s.image))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m compression.explain_shap", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-group", type=int, default=8, help="validation images per FST group (default 8)")
    ap.add_argument("--n-samples", type=int, default=4, help="GradientSHAP samples per image (default 4)")
    ap.add_argument("--stdevs", type=float, default=10.0, help="input noise sd in 0..255 units (default 10)")
    ap.add_argument("--student", type=Path, help="a saved student (compression.prune.save_student); default: teacher")
    ap.add_argument("--config", type=Path, help="compression config (default compression/config.toml)")
    ap.add_argument("--out", type=Path, help="output folder (default <run dir>/report)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.per_group < 1 or args.n_samples < 1:
        ap.error("--per-group and --n-samples must be at least 1")

    from .config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    if args.student:
        from .prune import load_student

        model, name = load_student(args.student), f"student {args.student.name}"
    else:
        from .reference import load_reference

        model, name = load_reference(), "reference teacher (sklesion 0.2.2)"
    print(f"selecting up to {args.per_group} validation images per FST group ...", flush=True)
    samples = select_samples(args.per_group, seed=args.seed, cfg=cfg)
    counts = {g: sum(s.group == g for s in samples) for g in GROUPS}
    print("  " + ", ".join(f"{g}: {n}" for g, n in counts.items()), flush=True)
    res = compare(model, samples, n_samples=args.n_samples, stdevs=args.stdevs, seed=args.seed, model_name=name,
                  log=lambda s: print(s, flush=True))
    out = args.out or (cfg.run_dir() / "report")
    out.mkdir(parents=True, exist_ok=True)
    (out / "explain_shap.json").write_text(json.dumps(res.to_dict(), indent=2) + "\n", encoding="utf-8")
    md = to_markdown(res)
    (out / "explain_shap.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"wrote {out / 'explain_shap.json'} and {out / 'explain_shap.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
