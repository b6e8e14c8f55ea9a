"""Model-card metrics and provenance, computed by code (never typed in).

- :func:`card_metrics`: on the **validation split** of ``compression.data`` (ISIC ``external`` images held out
  by image, stratified by dx; PAD patients held out): ISIC external melanoma-vs-nevus AUROC on p(mel),
  malignancy AUROC, PAD malignancy AUROC overall and per clinician-recorded FST I-VI with n, n_pos, a
  stratified-bootstrap 95% CI and the ``sufficient`` flag (:func:`mendicant_desktop.core.audit.audit`;
  FST V-VI are always insufficient here), the per-FST gap, and operating-point metrics at the card's
  threshold; the FP32 teacher's figures on the same images beside them. Threshold-free AUROCs are also given
  on the *whole* ``external`` and PAD pools minus the calibration images. The ``ham10000`` pool (the
  teacher's training data) is never used for any of these.
- :func:`choose_threshold`: the operating threshold, chosen by code on the **training split** of the
  non-HAM pools (ISIC external train + PAD train): the highest malignancy score at which the sensitivity
  there is still >= 0.85. The validation figures are therefore out-of-sample for the threshold too.
- :func:`agreement_block`: FP32 vs quantized agreement (top-1, max |Δp|, SQNR of probabilities and of the
  feature map) on every image of ``../shared/data``.
- :func:`build_provenance`: source network, calibration set (manifest sha256 + per-FST counts), splits
  (rule, seed, manifest digests), code version (``git rev-parse HEAD``, dirty flag), date, tool versions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import math
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.audit import audit

from .quantize import agreement, ort_session, top1_agreement
from .validate import evaluate, malignancy

__all__ = [
    "MIN_SENSITIVITY",
    "INTENDED_USE",
    "LIMITATIONS",
    "limitations",
    "choose_threshold",
    "joint_pass",
    "agreement_block",
    "card_metrics",
    "split_digest",
    "git_revision",
    "tool_versions",
    "build_provenance",
]

MIN_SENSITIVITY = 0.85
REPO = Path(__file__).resolve().parents[1]

INTENDED_USE = (
    "Research and decision-support prototype for clinicians and trainees: a second look at a dermoscopic or "
    "clinical close-up photo of a single skin lesion, giving seven class probabilities (HAM10000 classes), a "
    "malignancy score p(mel)+p(bcc)+p(akiec) with a high/low risk band at the card's threshold, and a Grad-CAM "
    "heatmap. It runs offline; no image leaves the machine."
)
LIMITATIONS = [
    "Not a medical device and not a diagnosis: every lesion of concern needs a clinician's examination and, "
    "where indicated, a biopsy.",
    "The network was trained on HAM10000 dermoscopy only (sklesion 0.2.2) and generalises poorly elsewhere: "
    "see the validation AUROCs for unseen ISIC dermoscopy (melanoma vs nevus) and for smartphone clinical photos "
    "(PAD-UFES-20), where the malignancy score is close to chance.",
    "The validation sets are small; read the 95% confidence intervals, not only the point estimates.",
    "Skin types V-VI are almost absent from every available labelled set (PAD: 4 images): performance on dark "
    "skin is unknown and is not reported. The PAD crops are masked, so skin tone cannot be estimated from "
    "their pixels; per-FST figures use the clinicians' labels.",
    "The operating threshold was chosen for sensitivity >= 0.85 on a mixed dermoscopy/clinical training "
    "portion; on clinical photos it flags most lesions (low specificity). Sites should re-check it locally.",
    "Squamous-cell carcinoma has no class of its own (HAM10000's akiec covers actinic keratosis and Bowen's "
    "disease); vascular lesions, dermatofibroma and acral/mucosal sites are rare in the data.",
]


def limitations(metrics: dict[str, Any], *, student: dict[str, Any] | None = None) -> list[str]:
    """:data:`LIMITATIONS` with the measured figures of this card filled in.

    ``student`` (``{"mac_ratio": float}``): the card is for a pruned, fine-tuned student rather than the
    quantized reference network, so the training and agreement statements describe that model instead.
    """
    out = list(LIMITATIONS)
    v = metrics.get("validation", {})
    ext = (v.get("isic_external_mel_vs_nv") or {}).get("auroc")
    pad_overall = (v.get("pad_malignancy") or {}).get("overall") or {}
    pad = pad_overall.get("auroc")
    sens, spec = pad_overall.get("sensitivity"), pad_overall.get("specificity")
    if sens is not None and spec is not None:  # the threshold statement with this model's measured operating point
        out[4] = ("The operating threshold was chosen for sensitivity >= 0.85 on a mixed dermoscopy/clinical training "
                  f"portion; on the held-out clinical photos (PAD-UFES-20) it reaches sensitivity {sens:.2f} and "
                  f"specificity {spec:.2f}. Sites should re-check it locally.")  # fmt: skip
    if student is not None:
        return _student_limitations(out, metrics, student, ext, pad)
    if ext is not None and pad is not None:
        out[1] = (f"The network was trained on HAM10000 dermoscopy only (sklesion 0.2.2) and generalises poorly "
                  f"elsewhere: melanoma-vs-nevus AUROC {ext:.2f} on unseen ISIC dermoscopy and malignancy AUROC "
                  f"{pad:.2f} on smartphone clinical photos (PAD-UFES-20), close to chance.")  # fmt: skip
    ag = metrics.get("agreement_fp32_vs_int8") or {}
    if "top1_agreement" in ag:
        out.append(f"INT8 quantization changes the top class of {100 * (1 - ag['top1_agreement']):.1f}% of images "
                   f"compared with the FP32 network (n={ag['n']}; largest probability change "
                   f"{ag['max_abs_diff_probs']:.2f}); the AUROCs stay within their confidence intervals.")  # fmt: skip
    return out


def _student_limitations(out: list[str], metrics: dict[str, Any], student: dict[str, Any], ext: float | None,
                         pad: float | None) -> list[str]:  # fmt: skip
    ratio = student.get("mac_ratio")
    kept = f" to {100 * float(ratio):.0f}% of its multiply-accumulates" if ratio is not None else ""
    out[1] = ("The network is the sklesion 0.2.2 reference (trained by its authors on HAM10000 dermoscopy) pruned"
              f"{kept} and fine-tuned on the train split of compression.data (ISIC dermoscopy and PAD-UFES-20 "
              "clinical photos; see provenance.splits)")  # fmt: skip
    if ext is not None and pad is not None:
        out[1] += (f": melanoma-vs-nevus AUROC {ext:.2f} on held-out ISIC dermoscopy and malignancy AUROC {pad:.2f} "
                   "on held-out smartphone clinical photos (PAD-UFES-20)")  # fmt: skip
        lab = ((student.get("without_metadata") or {}).get("candidate_with_metadata") or {}).get("auroc")
        out[1] += ("." if lab is None else
                   f", {lab:.2f} on the biopsied lesions alone (the others are unbiopsied benign lesions recorded "
                   "without patient details, which are easy to tell apart).")  # fmt: skip
    else:
        out[1] += "."
    ag = metrics.get("agreement_fp32_vs_int8") or {}
    if "top1_agreement" in ag:
        out.append(f"This pruned, fine-tuned INT8 model gives a different top class from the FP32 reference network "
                   f"on {100 * (1 - ag['top1_agreement']):.1f}% of images (n={ag['n']}; largest probability change "
                   f"{ag['max_abs_diff_probs']:.2f}): it is a different model, judged by its own validation figures, "
                   "not by agreement with the reference.")  # fmt: skip
    line = _paired_limitation(student.get("paired"), metrics)
    if line:
        out.append(line)
    nm = student.get("without_metadata") or {}
    a, b = nm.get("candidate_with_metadata") or {}, nm.get("candidate") or {}
    if a.get("auroc") is not None and b.get("auroc") is not None:  # AUROC only: the gate scores at its own threshold
        out.append(f"Enter the patient's age, sex and body site when they are known. On biopsied clinical photos "
                   f"(PAD-UFES-20 validation, n={nm.get('n')}) this model's malignancy AUROC is {a['auroc']:.2f} "
                   f"with them and {b['auroc']:.2f} without.")  # fmt: skip
    return out


def _paired_limitation(paired: dict[str, Any] | None, metrics: dict[str, Any]) -> str | None:
    """What the validation split can and cannot say about this model against the reference (the gate's paired
    bootstrap): an interval straddling a limit means the split cannot resolve that comparison."""
    if not paired:
        return None
    parts = []
    for key, what in (("isic_external_auroc_diff", "melanoma-vs-nevus AUROC on ISIC dermoscopy"),
                      ("auroc_gap_diff", "gap between the per-FST PAD AUROCs (FST II vs III)")):  # fmt: skip
        d = paired.get(key) or {}
        lo, hi = d.get("ci95") or (None, None)
        if d.get("value") is None or lo is None or hi is None:
            continue
        reading = {"met": "within the gate's limit", "missed": "beyond the gate's limit",
                   None: "so the validation split cannot tell whether it is better or worse than the reference"}  # fmt: skip
        parts.append(f"{what} {d['value']:+.3f} (paired bootstrap 95% CI {lo:+.3f} to {hi:+.3f}, "
                     f"{reading.get(d.get('resolved'), '')})")  # fmt: skip
    if not parts:
        return None
    text = ("Compared with the reference network on the same validation images, this model changes the "
            + "; and the ".join(parts) + ". The gate compares point estimates; where the interval straddles its "
            "limit the verdict rests on which images are in the split.")  # fmt: skip
    groups = ((metrics.get("validation") or {}).get("pad_malignancy") or {}).get("groups") or {}
    sizes = []  # (smaller class count, which class, group) per gap group
    for name in paired.get("gap_groups") or []:
        if g := groups.get(name):
            n, n_pos = int(g["n"]), int(g["n_pos"])
            sizes.append((min(n_pos, n - n_pos), "malignant" if n_pos * 2 < n else "benign", name))
    if sizes:
        k, cls, name = min(sizes)
        text += (f" Fairness across skin types rests on {len(sizes)} clinician-labelled groups "
                 f"({', '.join('FST ' + n for n in paired['gap_groups'])}); the smallest class is FST {name}'s "
                 f"{k} {cls} lesions.")  # fmt: skip
    return text


# --------------------------------------------------------------------------------------------------
# Operating threshold
# --------------------------------------------------------------------------------------------------


def choose_threshold(scores: Any, y: Any, min_sensitivity: float = MIN_SENSITIVITY) -> dict[str, Any]:
    """The highest threshold ``t`` with sensitivity(score >= t) >= ``min_sensitivity`` on (scores, y).

    ``t`` is the ``ceil(min_sensitivity * n_pos)``-th highest positive score, kept strictly inside (0, 1).
    Returns the threshold with the sensitivity/specificity it reaches on these data.
    """
    s = np.asarray(scores, np.float64)
    yy = np.asarray(y, np.int64)
    if s.shape != yy.shape or s.ndim != 1:
        raise ValueError("scores and y must be one-dimensional and of equal length")
    pos = np.sort(s[yy == 1])[::-1]
    n_pos, n_neg = int(len(pos)), int((yy == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("need positives and negatives to choose a threshold")
    k = int(math.ceil(min_sensitivity * n_pos))
    t = float(np.clip(pos[k - 1], 1e-6, 1 - 1e-6))
    called = s >= t
    return {
        "threshold": t,
        "rule": f"highest malignancy score with sensitivity >= {min_sensitivity} (score >= threshold is high risk)",
        "min_sensitivity": float(min_sensitivity),
        "sensitivity": float(called[yy == 1].mean()),
        "specificity": float((~called[yy == 0]).mean()),
        "n": int(len(s)),
        "n_pos": n_pos,
    }


# --------------------------------------------------------------------------------------------------
# FP32 vs quantized
# --------------------------------------------------------------------------------------------------


def joint_pass(ref_path: str | Path, q_path: str | Path, images: Any, meta: Any, positions: Sequence[int], *,
               threads: int = 2, batch_size: int = 8, log: Callable[[str], None] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, float, float]:  # fmt: skip
    """Both models on ``images[positions]``: (p_ref, p_q, feature signal power, feature noise power)."""
    s_ref, s_q = ort_session(ref_path, threads), ort_session(q_path, threads)
    pos_all = np.asarray(positions, np.int64)
    p_ref = np.zeros((len(pos_all), 7), np.float32)
    p_q = np.zeros_like(p_ref)
    sig = noise = 0.0
    t0 = time.time()
    for a in range(0, len(pos_all), batch_size):
        pos = pos_all[a : a + batch_size]
        feeds = {"image": np.ascontiguousarray(np.stack([np.asarray(images[int(i)], np.float32) for i in pos])),
                 "meta": np.ascontiguousarray(np.stack([np.asarray(meta[int(i)], np.float32) for i in pos]))}  # fmt: skip
        pr, fr = s_ref.run(["probs", "features"], feeds)
        pq, fq = s_q.run(["probs", "features"], feeds)
        p_ref[a : a + len(pos)], p_q[a : a + len(pos)] = pr, pq
        fr64 = fr.astype(np.float64)
        sig += float(np.sum(fr64 * fr64))
        noise += float(np.sum((fr64 - fq) ** 2))
        if log and (a // batch_size) % 25 == 24:
            log(f"  joint pass {a + len(pos)}/{len(pos_all)} ({time.time() - t0:.0f}s)")
    return p_ref, p_q, sig, noise


def agreement_block(p_ref: np.ndarray, p_q: np.ndarray, records: Sequence[Any], f_signal: float,
                    f_noise: float) -> dict[str, Any]:  # fmt: skip
    """Agreement overall (with feature SQNR) and per data set / pool."""
    out = agreement(p_ref, p_q, f_signal=f_signal, f_noise=f_noise)
    out["data"] = "every labelled image of ../shared/data (both data sets, all pools, train and validation)"
    by: dict[str, Any] = {}
    for name, sel in (("isic_ham10000", lambda r: r.pool == "ham10000"),
                      ("isic_external", lambda r: r.pool == "external"),
                      ("pad", lambda r: r.dataset == "pad")):  # fmt: skip
        idx = [k for k, r in enumerate(records) if sel(r)]
        if idx:
            by[name] = {"n": len(idx), "top1_agreement": top1_agreement(p_ref[idx], p_q[idx]),
                        "max_abs_diff_probs": float(np.abs(p_ref[idx] - p_q[idx]).max())}  # fmt: skip
    out["by_pool"] = by
    d = np.abs(malignancy(p_ref) - malignancy(p_q))
    out["max_abs_diff_malignancy"] = float(d.max())
    return out


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def _auroc_only(probs: np.ndarray, records: Sequence[Any], seed: int, n_boot: int) -> dict[str, Any]:
    """Threshold-free AUROCs (with CI) of a record set: ISIC external mel-vs-nv, PAD malignancy per FST."""
    full = evaluate(probs, records, threshold=0.5, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {}
    if "isic_external_mel_vs_nv" in full:
        out["isic_external_mel_vs_nv"] = full["isic_external_mel_vs_nv"]
    if "isic_external_malignancy" in full:
        e = full["isic_external_malignancy"]
        out["isic_external_malignancy"] = {"auroc": e["auroc"], "auroc_ci95": e["auroc_ci95"], "n": e["n"],
                                           "n_pos": e["n_pos"]}  # fmt: skip
    if "pad_malignancy" in full:
        p = full["pad_malignancy"]
        out["pad_malignancy"] = {
            "overall": {k: p["overall"][k] for k in ("n", "n_pos", "auroc", "auroc_ci95")},
            "groups": {g: {k: v[k] for k in ("n", "n_pos", "auroc", "auroc_ci95", "sufficient")}
                       for g, v in p["groups"].items()},
            "auroc_gap": p["auroc_gap"], "auroc_gap_ci95": p["auroc_gap_ci95"],
        }  # fmt: skip
    return out


def _withhold(groups: dict[str, Any]) -> dict[str, Any]:
    """Every FST I-VI (absent ones with n = 0) plus 'unknown'; insufficient groups keep only n, n_pos and the
    flag, with a note instead of figures."""
    out = {}
    full = {g: groups.get(g, {"n": 0, "n_pos": 0, "sufficient": False}) for g in ("I", "II", "III", "IV", "V", "VI")}
    if "unknown" in groups:
        full["unknown"] = groups["unknown"]
    for g, d in full.items():
        if d.get("sufficient"):
            out[g] = d
        else:
            keep = {k: d[k] for k in ("n", "n_pos", "sufficient") if k in d}
            n, n_pos = int(d.get("n", 0)), int(d.get("n_pos", 0))
            if n == 0:
                keep["note"] = "no images"
            elif n_pos == 0 or n_pos == n:
                keep["note"] = "only one class present (AUROC undefined): no figure reported"
            else:
                keep["note"] = (f"too few images for a figure (n={n}, {n_pos} positive, {n - n_pos} negative; "
                                "needs n >= 30 with >= 5 of each)")  # fmt: skip
            out[g] = keep
    return out


def card_metrics(
    p_q: np.ndarray,
    p_ref: np.ndarray,
    records: Sequence[Any],
    *,
    threshold_info: dict[str, Any],
    calibration_relpaths: Sequence[str],
    agreement_info: dict[str, Any],
    seed: int,
    n_boot: int = 1000,
    agreement_label: str = "FP32-vs-INT8",
    full_pools: bool = True,
) -> dict[str, Any]:
    """The card's ``metrics`` block (``p_q``/``p_ref`` aligned with ``records``; every record of the data).

    ``full_pools=False`` (a model fine-tuned on the train split of the external and PAD pools) leaves out the
    whole-pool AUROCs, which would then include training images; ``agreement_label`` names the comparison
    in the summary.
    """
    thr = float(threshold_info["threshold"])
    val = [k for k, r in enumerate(records) if r.split == "val"]
    if any(records[k].pool == "ham10000" for k in val):
        raise RuntimeError("validation split contains ham10000-pool images")
    v_recs = [records[k] for k in val]
    m_val = evaluate(p_q[val], v_recs, threshold=thr, n_boot=n_boot, seed=seed)
    t_val = evaluate(p_ref[val], v_recs, threshold=thr, n_boot=n_boot, seed=seed)
    if "pad_malignancy" in m_val:
        m_val["pad_malignancy"]["groups"] = _withhold(m_val["pad_malignancy"]["groups"])
    calib = set(calibration_relpaths)
    pools = [k for k, r in enumerate(records) if r.pool in ("external", "pad") and r.relpath not in calib]
    p_recs = [records[k] for k in pools]
    full_q = _auroc_only(p_q[pools], p_recs, seed, n_boot) if full_pools else {}
    full_t = _auroc_only(p_ref[pools], p_recs, seed, n_boot) if full_pools else {}
    if "pad_malignancy" in full_q:
        full_q["pad_malignancy"]["groups"] = _withhold(full_q["pad_malignancy"]["groups"])

    def brief(m: dict[str, Any]) -> dict[str, Any]:
        return {
            "isic_external_mel_vs_nv_auroc": (m.get("isic_external_mel_vs_nv") or {}).get("auroc"),
            "isic_external_malignancy_auroc": (m.get("isic_external_malignancy") or {}).get("auroc"),
            "pad_malignancy_auroc": ((m.get("pad_malignancy") or {}).get("overall") or {}).get("auroc"),
            "pad_per_fst_auroc": {g: v.get("auroc") for g, v in ((m.get("pad_malignancy") or {}).get("groups") or {}).items()
                                  if v.get("sufficient")},
            "pad_per_fst_auroc_gap": (m.get("pad_malignancy") or {}).get("auroc_gap"),
        }  # fmt: skip

    n_ext_val = sum(r.pool == "external" for r in v_recs)
    n_pad_val = sum(r.dataset == "pad" for r in v_recs)
    return {
        "summary": (
            f"Validation split (ISIC external n={n_ext_val}, PAD n={n_pad_val}; never the ham10000 pool): "
            f"melanoma-vs-nevus AUROC {m_val['isic_external_mel_vs_nv']['auroc']:.3f}, PAD malignancy AUROC "
            f"{m_val['pad_malignancy']['overall']['auroc']:.3f}; {agreement_label} top-1 agreement "
            f"{agreement_info['top1_agreement']:.3f} on {agreement_info['n']} images."
        ),
        "evaluated_on": {
            "validation": "the validation split of compression.data (see provenance.splits): ISIC external pool "
                          "images held out by image (stratified by dx) and PAD-UFES-20 patients held out by patient; "
                          "the ham10000 pool is never evaluated (the teacher was trained on it)",
            "scores": {"malignancy": "p(mel) + p(bcc) + p(akiec)", "melanoma_vs_nevus": "p(mel)"},
            "fst": "PAD clinician-recorded Fitzpatrick type; images without a record form the 'unknown' group",
            "confidence_intervals": f"95% percentile intervals, stratified bootstrap, {n_boot} resamples, seed {seed}",
            "sufficient": "n >= 30 with >= 5 positives and >= 5 negatives; other groups are not reported",
        },
        "validation": m_val,
        "teacher_fp32_validation": brief(t_val),
        "full_pools_threshold_free": {
            "note": "every ISIC external and PAD image except the calibration images (the operating threshold was "
                    "chosen on part of them, so only threshold-free AUROCs are given); never the ham10000 pool",
            "n": len(pools),
            "int8": full_q,
            "teacher_fp32": brief(full_t),
        } if full_pools else {
            "note": "not reported: this model was fine-tuned on the train split of the ISIC external and PAD "
                    "pools, so only the validation split is out-of-sample for it",
        },
        "operating_point": threshold_info,
        "agreement_fp32_vs_int8": agreement_info,
    }


# --------------------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------------------


def split_digest(records: Sequence[Any], split: str) -> dict[str, Any]:
    """sha256 over ``relpath  sha256`` lines of a split's images (the run's manifest content), with counts."""
    rs = [r for r in records if r.split == split]
    lines = "".join(f"{r.relpath}  {r.sha256}\n" for r in rs)
    by_pool: dict[str, int] = {}
    for r in rs:
        by_pool[r.pool] = by_pool.get(r.pool, 0) + 1
    return {"n": len(rs), "by_pool": by_pool, "manifest_sha256": hashlib.sha256(lines.encode()).hexdigest()}


def git_revision(repo: str | Path = REPO) -> dict[str, Any]:
    """``{"commit", "dirty"}`` from git (read-only commands); ``"unknown"`` outside a checkout."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=20, check=True).stdout  # fmt: skip
        return {"commit": head, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def tool_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("onnxruntime", "onnx", "onnxslim", "numpy", "torch", "pillow"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def build_provenance(
    *,
    records: Sequence[Any],
    calibration: dict[str, Any],
    quantization: dict[str, Any],
    cfg: Any,
    teacher_sha256: str,
    teacher_file: str,
    extra: dict[str, Any] | None = None,
    built_by: str = "python -m compression.bundle_reference",
) -> dict[str, Any]:
    from .reference import SKLESION_VERSION, SKLESION_WHEEL_SHA256

    prov: dict[str, Any] = {
        "source_network": {
            "package": f"sklesion=={SKLESION_VERSION}",
            "licence": "MIT",
            "wheel_sha256": SKLESION_WHEEL_SHA256,
            "architecture": "Keras Xception backbone at 254x254 + metadata branch (age, sex, site) + MLP head, "
                            "trained by its authors on HAM10000 (7 classes)",
            "port": "compression/reference.py (PyTorch, weights read from model.weights.h5), exported to ONNX "
                    "by compression/export.py (BatchNorm folded, onnxslim)",
            "fp32_onnx": teacher_file,
            "fp32_onnx_sha256": teacher_sha256,
        },
        "quantization": quantization,
        "calibration": calibration,
        "data": {
            "sets": {
                "isic_dermoscopy": "ISIC Archive (HAM10000: Tschandl et al. 2018; ISIC 2019), CC BY-NC 4.0 / "
                                   "CC BY-NC-SA 4.0; 1,971 images, pools ham10000 and external",
                "pad_ufes20_clinical": "PAD-UFES-20 (Pacheco et al. 2020), CC BY 4.0; 1,234 masked clinical crops",
            },
            "images_in_repository": "none (the images are only read from ../shared/data)",
        },
        "splits": {
            "rule": "compression.data.split_records: ham10000 pool -> train only; ISIC external split by image, "
                    "stratified by dx; PAD split by patient, stratified by (clinician FST, any malignant lesion)",
            "seed": int(cfg.run.seed),
            "isic_val_fraction": float(cfg.data.isic_val_fraction),
            "pad_val_fraction": float(cfg.data.pad_val_fraction),
            "train": split_digest(records, "train"),
            "val": split_digest(records, "val"),
        },
        "code": {**git_revision(), "built_by": built_by, "config": "compression/config.toml"},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tools": tool_versions(),
    }
    if extra:
        prov.update(extra)
    return prov


def pad_fst_audit(probs: np.ndarray, records: Sequence[Any], threshold: float, seed: int = 0,
                  n_boot: int = 1000) -> dict[str, Any]:  # fmt: skip
    """PAD malignancy audit per clinician FST (helper for reports)."""
    pad = [k for k, r in enumerate(records) if r.dataset == "pad"]
    groups = [records[k].fst if records[k].fst_source == "label" else "unknown" for k in pad]
    y = np.array([records[k].malignant for k in pad])
    return audit(malignancy(probs[pad]), y, groups, threshold, n_boot=n_boot, seed=seed).to_dict()
