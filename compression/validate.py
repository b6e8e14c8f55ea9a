"""Validation gate: ``python -m compression.validate MODEL_CARD_OR_ONNX`` (also ``python -m compression validate``).

On the **validation split** of ``compression.data`` (ISIC ``external`` images split by image, stratified by dx;
PAD split by patient; the ``ham10000`` pool is never used), relative to the FP32 teacher measured in the
same run, it computes:

- ISIC external melanoma-vs-nevus AUROC on p(mel) (images with dx MEL or NV);
- PAD malignancy AUROC on p(mel)+p(bcc)+p(akiec), overall and per clinician-recorded FST with n, n_pos and
  a stratified bootstrap 95% CI (:func:`mendicant_desktop.core.audit.audit`), and the per-FST gap over the
  sufficient groups (n >= 30 with >= 5 positives and >= 5 negatives);
- overall malignancy AUROC on the whole validation split; top-1 agreement with the teacher;
- size (MB = 10^6 bytes), MACs and parameters counted from the ONNX graph (:func:`count_macs_params`);
- latency at batch 1, 2 intra-op threads, teacher and candidate alternating in one process;
- :func:`paired_differences`: candidate minus teacher for the ISIC and PAD AUROCs and the per-FST gap, with a
  *paired* stratified bootstrap 95% CI (both models scored on the same resamples). Informational: it says whether
  the validation split can resolve a limit at all (the gate itself compares the point estimates, as specified).
- ``--labels LABELS.csv`` (e.g. ``fitzpatrick17k_clinical/labels.csv``): that labelled set audited with the app's own
  table reader and audit run (:func:`audit_labelled_set`, what ``--audit`` runs), per type or DDI-style
  (``--fst-grouping``), malignant vs the rest and vs benign neoplasms. Informational, never gated.

The gate limits (``[gate]`` in ``compression/config.toml``; the constants below are the fall-back with the
same values, never looser): size < 30 MB; latency <= 1/2 of the teacher's; ISIC external and PAD AUROC no
lower than the teacher's - 0.02; per-FST AUROC gap no wider than the teacher's + 0.005. Targets
(``[targets]``) are reported as met or missed. Exit status 0 when every limit is met, 1 when one is missed,
2 on a usage error.

The teacher's validation predictions are cached under ``~/.cache/mendicant/predictions/<sha256>.npz`` keyed by
the teacher ONNX's sha256 and each image's sha256 + metadata, so a CI run costs one pass of the candidate.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.audit import audit, auroc, is_sufficient, percentile_ci
from mendicant_desktop.core.results import CLASS_NAMES, MALIGNANT_INDICES

from .quantize import ort_session, run_model, top1_agreement

__all__ = [
    "GATE_FALLBACK",
    "TARGETS_FALLBACK",
    "EvalSet",
    "count_macs_params",
    "relative_latency",
    "prediction_cache_dir",
    "cached_probs",
    "load_prediction_cache",
    "store_predictions",
    "eval_set",
    "resolve_model",
    "malignancy",
    "evaluate",
    "gate_checks",
    "gate_limits",
    "paired_differences",
    "without_metadata",
    "format_table",
    "validate",
    "run_stage",
    "main",
]

CLASSES = CLASS_NAMES
MEL = CLASSES.index("mel")
MAL_IDX = MALIGNANT_INDICES
ROMAN = ("I", "II", "III", "IV", "V", "VI")

#: Used only when compression/config.toml cannot be read; the same values as its [gate] section.
GATE_FALLBACK = {"max_size_mb": 30.0, "max_latency_ratio": 0.5, "max_auroc_drop": 0.02, "max_gap_increase": 0.005}
TARGETS_FALLBACK = {"size_mb": 15.0, "macs_ratio": 0.60, "latency_ratio": 0.25, "isic_external_auroc": 0.90,
                    "pad_auroc": 0.92, "fst_group_auroc": 0.85, "fst_gap": 0.05, "fst_min_n": 30}  # fmt: skip


# --------------------------------------------------------------------------------------------------
# MACs and parameters from the ONNX graph
# --------------------------------------------------------------------------------------------------

_MAC_OPS = ("Conv", "ConvInteger", "QLinearConv", "Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")
_PASS_THROUGH = ("DequantizeLinear", "Cast", "Identity")
_PARAM_TYPES = None  # filled lazily: float, float16, bfloat16, int8, uint8, int32


def _static_shapes(model: Any, batch: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> concrete shape after setting every symbolic input dim to ``batch``."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for inp in m.graph.input:
        for d in inp.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.dim_value = batch
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for vi in [*m.graph.input, *m.graph.value_info, *m.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            shapes[vi.name] = tuple(int(d.dim_value) for d in tt.shape.dim)
    for t in m.graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    return shapes


def count_macs_params(model: Any, batch: int = 1) -> dict[str, Any]:
    """Multiply-accumulates per forward pass at ``batch`` and parameter count, from the ONNX graph.

    MACs: Conv-like ops ``prod(output shape) * (C_in / groups) * prod(kernel)`` (= ``prod(out) * prod(W.shape[1:])``),
    Gemm/MatMul-like ops ``prod(output shape) * K``; shapes from ONNX shape inference with the batch fixed.
    Works for FP32, FP16, QDQ (weights behind DequantizeLinear) and dynamic-quantized (ConvInteger) graphs.
    Parameters: elements of the weight and bias initializers those ops read (through DequantizeLinear /
    Cast), i.e. learned tensors, not quantization scales or zero points.
    """
    import onnx

    m = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    shapes = _static_shapes(m, batch)
    inits = {t.name: t for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}

    def source(name: str) -> str | None:
        seen = 0
        while name not in inits and seen < 8:
            p = producer.get(name)
            if p is None or p.op_type not in _PASS_THROUGH:
                return None
            name = p.input[0]
            seen += 1
        return name if name in inits else None

    macs = 0
    by_op: dict[str, int] = {}
    params: set[str] = set()
    missing: list[str] = []
    for n in m.graph.node:
        if n.op_type not in _MAC_OPS:
            continue
        out = shapes.get(n.output[0])
        if n.op_type in ("Conv", "ConvInteger"):
            w_name, b_idx = n.input[1], (2 if n.op_type == "Conv" else None)
        elif n.op_type == "QLinearConv":
            w_name, b_idx = n.input[3], 8
        elif n.op_type == "QLinearMatMul":
            w_name, b_idx = n.input[3], None
        else:
            w_name, b_idx = n.input[1], (2 if n.op_type == "Gemm" else None)
        w_shape = shapes.get(w_name)
        if out is None or w_shape is None:
            missing.append(n.name or n.op_type)
            continue
        if "Conv" in n.op_type:
            k = int(np.prod(w_shape[1:]))
        elif n.op_type == "Gemm":
            trans_b = next((a.i for a in n.attribute if a.name == "transB"), 0)
            k = int(w_shape[1] if trans_b else w_shape[0])
        else:
            k = int(w_shape[-2]) if len(w_shape) >= 2 else int(w_shape[0])
        c = int(np.prod(out)) * k
        macs += c
        by_op[n.op_type] = by_op.get(n.op_type, 0) + c
        for name in (w_name, n.input[b_idx] if b_idx is not None and len(n.input) > b_idx else None):
            src = source(name) if name else None
            if src:
                params.add(src)
    n_params = int(sum(int(np.prod(inits[p].dims)) for p in params))
    return {"macs": int(macs), "params": n_params, "batch": batch, "macs_by_op": by_op, "unresolved": missing}


# --------------------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------------------


def relative_latency(candidate: str | os.PathLike, teacher: str | os.PathLike, image: np.ndarray,
                     meta: np.ndarray, *, threads: int = 2, rounds: int = 20, warmup: int = 3) -> dict[str, Any]:  # fmt: skip
    """Median and p95 latency (ms) of both models at batch 1, runs alternating in this process."""
    x = np.ascontiguousarray(image[None].astype(np.float32))
    mt = np.ascontiguousarray(meta[None].astype(np.float32))
    sessions = {"teacher": ort_session(teacher, threads), "candidate": ort_session(candidate, threads)}
    feeds = {"image": x, "meta": mt}
    for _ in range(warmup):
        for s in sessions.values():
            s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for r in range(rounds):
        order = ("teacher", "candidate") if r % 2 == 0 else ("candidate", "teacher")
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - t0) * 1e3)
    out: dict[str, Any] = {"threads": threads, "rounds": rounds, "batch": 1}
    for k, v in times.items():
        out[k] = {"p50_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95))}
    out["ratio_p50"] = out["candidate"]["p50_ms"] / out["teacher"]["p50_ms"]
    out["ratio_p95"] = out["candidate"]["p95_ms"] / out["teacher"]["p95_ms"]
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation data and cached predictions
# --------------------------------------------------------------------------------------------------


@dataclass
class EvalSet:
    """Images to score, in order: ``records`` (compression.data.Record), preprocessed ``images``, ``meta``."""

    records: list[Any]
    images: Any
    meta: np.ndarray
    source: str

    def keys(self) -> list[str]:
        return [f"{r.sha256}:{hashlib.sha1(np.ascontiguousarray(self.meta[k], np.float32).tobytes()).hexdigest()[:12]}"
                for k, r in enumerate(self.records)]  # fmt: skip


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def eval_set(cfg: Any, split: str = "val", *, log: Callable[[str], None] = print) -> EvalSet:
    """The ``split`` images of the config's data: from the run's decoded index when the data stage has run,
    otherwise the same split recomputed with :func:`compression.data.split_records` and only those images
    decoded with the engine's preprocessing."""
    from .data import data_done, load_index, read_records, shared_data_dir, split_records, subset_records

    if cfg is None:
        from .config import Config

        cfg = Config()
    run_dir = cfg.run_dir()
    if data_done(run_dir):
        index = load_index(run_dir)
        pos = index.indices(split)
        return _Subset(index, pos).as_evalset(f"{run_dir}/data ({split})")
    from mendicant_desktop.core.metadata import encode_metadata
    from mendicant_desktop.core.preprocess import MODEL_SIZE, load_image, preprocess

    src = shared_data_dir(cfg)
    records = subset_records(read_records(src), cfg.data.max_images, cfg.run.seed)
    splits = split_records(records, cfg.data.isic_val_fraction, cfg.data.pad_val_fraction, cfg.run.seed)
    chosen = [r for r, s in zip(records, splits, strict=True) if s == split]
    t0 = time.time()
    images = np.zeros((len(chosen), *MODEL_SIZE, 3), np.float32)
    meta = np.zeros((len(chosen), 10), np.float32)
    for k, r in enumerate(chosen):
        r.split = split
        path = src / r.relpath
        r.sha256 = _file_sha256(path)
        images[k] = preprocess(load_image(path))
        meta[k] = encode_metadata(r.metadata if r.dataset == "pad" else None)
    log(f"validate: decoded {len(chosen)} {split} images from {src} ({time.time() - t0:.0f}s)")
    return EvalSet(records=chosen, images=images, meta=meta, source=f"{src} ({split}, decoded)")


class _Subset:
    def __init__(self, index: Any, pos: np.ndarray) -> None:
        self.index, self.pos = index, np.asarray(pos, np.int64)

    def as_evalset(self, source: str) -> EvalSet:
        view = _RowView(self.index.images, self.pos)
        return EvalSet(records=[self.index.records[i] for i in self.pos], images=view,
                       meta=np.asarray(self.index.meta[self.pos], np.float32), source=source)  # fmt: skip


class _RowView:
    """Lazy row view of a memory-mapped image array (no 2 GB copy)."""

    def __init__(self, arr: Any, pos: np.ndarray) -> None:
        self.arr, self.pos = arr, pos

    def __len__(self) -> int:
        return len(self.pos)

    def __getitem__(self, k: int) -> np.ndarray:
        return np.asarray(self.arr[int(self.pos[int(k)])], np.float32)


def prediction_cache_dir() -> Path:
    env = os.environ.get("MENDICANT_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "mendicant"
    return base / "predictions"


def _cache_path(sha: str) -> Path:
    return prediction_cache_dir() / f"{sha}.npz"


def load_prediction_cache(sha: str) -> dict[str, np.ndarray]:
    """``{image key: probs}`` cached for the model with this sha256 (empty if none or unreadable)."""
    path = _cache_path(sha)
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as z:
            return dict(zip(z["keys"].tolist(), z["probs"], strict=True))
    except (OSError, ValueError, KeyError):
        return {}


def store_predictions(sha: str, keys: Sequence[str], probs: np.ndarray) -> Path:
    """Merge ``keys -> probs`` into the model's cache file (atomic replace)."""
    cache = load_prediction_cache(sha)
    for k, p in zip(keys, np.asarray(probs, np.float32), strict=True):
        cache[k] = p
    path = _cache_path(sha)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".pred.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=np.array(list(cache), dtype=str), probs=np.stack(list(cache.values())))
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def cached_probs(model_path: str | os.PathLike, es: EvalSet, *, threads: int = 2, batch_size: int = 8,
                 log: Callable[[str], None] | None = None, model_sha256: str | None = None) -> np.ndarray:  # fmt: skip
    """Probabilities of ``model_path`` on ``es``, reusing and extending the per-model cache file."""
    sha = model_sha256 or _file_sha256(Path(model_path))
    cache = load_prediction_cache(sha)
    keys = es.keys()
    todo = [k for k, key in enumerate(keys) if key not in cache]
    if todo:
        if log:
            log(f"validate: scoring {len(todo)} images with {Path(model_path).name} (cache miss)")
        probs = run_model(ort_session(model_path, threads), es.images, es.meta, todo, batch_size=batch_size, log=log)
        store_predictions(sha, [keys[k] for k in todo], probs)
        for k, p in zip(todo, probs, strict=True):
            cache[keys[k]] = p
    return np.stack([cache[key] for key in keys]).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def malignancy(probs: np.ndarray) -> np.ndarray:
    """p(mel) + p(bcc) + p(akiec), clipped to [0, 1] (float rounding can exceed 1 by ~1e-7)."""
    return np.clip(np.asarray(probs, np.float64)[:, list(MAL_IDX)].sum(axis=1), 0.0, 1.0)


def _f(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def evaluate(probs: np.ndarray, records: Sequence[Any], *, threshold: float = 0.5, n_boot: int = 1000,
             seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The card/gate metrics of ``probs`` (rows aligned with ``records``)."""
    probs = np.asarray(probs, np.float64)
    mal = malignancy(probs)
    y = np.array([int(r.malignant) for r in records], np.int64)
    out: dict[str, Any] = {"n": len(records)}
    ext = np.array([k for k, r in enumerate(records)
                    if r.dataset == "isic" and r.pool == "external" and r.dx in ("MEL", "NV")], np.int64)  # fmt: skip
    if len(ext):
        y_mel = np.array([records[k].dx == "MEL" for k in ext], np.int64)
        res = audit(probs[ext, MEL].clip(0, 1), y_mel, ["unknown"] * len(ext), threshold=0.5, n_boot=n_boot,
                    seed=seed, fst_source="estimated")  # fmt: skip
        o = res.overall
        out["isic_external_mel_vs_nv"] = {"auroc": _f(o.auroc), "auroc_ci95": [_f(v) for v in o.auroc_ci95],
                                          "n": o.n, "n_pos": o.n_pos, "score": "p(mel)", "positive": "MEL"}  # fmt: skip
    ext_all = np.array([k for k, r in enumerate(records) if r.dataset == "isic" and r.pool == "external"], np.int64)
    if len(ext_all):
        r_ext = audit(mal[ext_all], y[ext_all], ["unknown"] * len(ext_all), threshold, n_boot=n_boot, seed=seed,
                      fst_source="estimated")  # fmt: skip
        out["isic_external_malignancy"] = r_ext.overall.to_dict()
    pad = np.array([k for k, r in enumerate(records) if r.dataset == "pad"], np.int64)
    if len(pad):
        groups = [records[k].fst if getattr(records[k], "fst_source", "label") == "label" else "unknown" for k in pad]
        res = audit(mal[pad], y[pad], groups, threshold, n_boot=n_boot, seed=seed, fst_source="label")
        d = res.to_dict()
        out["pad_malignancy"] = {"overall": d["overall"], "groups": d["groups"], "auroc_gap": d["auroc_gap"],
                                 "auroc_gap_ci95": d["auroc_gap_ci95"], "gap_groups": list(res.gap_groups),
                                 "sensitivity_gap": d["sensitivity_gap"], "fst_source": "clinician label"}  # fmt: skip
        # The PAD images without a clinician FST are all unbiopsied benign lesions recorded without metadata: a
        # model can score them apart from "missing metadata" alone. The biopsied, FST-labelled subset has none of
        # that shortcut; reported beside the overall figure (the gate's PAD limit stays on the overall, as specified).
        lab = np.array([k for k in pad if getattr(records[k], "fst_source", "label") == "label"], np.int64)
        if len(lab) and 0 < y[lab].sum() < len(lab):
            r_lab = audit(mal[lab], y[lab], ["unknown"] * len(lab), threshold, n_boot=n_boot, seed=seed,
                          fst_source="label")  # fmt: skip
            out["pad_malignancy_fst_labelled"] = r_lab.overall.to_dict()
    if len(records):
        res = audit(mal, y, ["unknown"] * len(records), threshold, n_boot=n_boot, seed=seed, fst_source="estimated")
        out["overall_malignancy"] = res.overall.to_dict()
    out["threshold"] = float(threshold)
    return out


def paired_differences(p_c: np.ndarray, p_t: np.ndarray, records: Sequence[Any], gate: dict[str, float], *,
                       n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Candidate minus teacher, with a paired stratified bootstrap 95% CI, for each gated AUROC quantity (and the
    PAD AUROC on the biopsied, FST-labelled images only, which the gate does not judge, read against the PAD limit).

    Each resample draws the same rows for both models: ISIC external MEL and NV separately; PAD within every
    (FST group, malignant) cell, images without a clinician FST forming one more group. The per-FST gap is
    max - min over the groups sufficient on the full split (as in the gate). ``resolved`` says where the CI
    lies against the limit on the difference (``"met"`` wholly inside, ``"missed"`` wholly outside, ``None``
    straddling): a limit the split cannot resolve is decided by noise. Informational only.
    """
    p_c, p_t = np.asarray(p_c, np.float64), np.asarray(p_t, np.float64)
    if p_c.shape != p_t.shape or len(p_c) != len(records):
        raise ValueError(f"prediction shapes differ: {p_c.shape} vs {p_t.shape} for {len(records)} records")
    m_c, m_t = malignancy(p_c), malignancy(p_t)
    y = np.array([int(r.malignant) for r in records], np.int64)
    ext = np.array([k for k, r in enumerate(records)
                    if r.dataset == "isic" and r.pool == "external" and r.dx in ("MEL", "NV")], np.int64)  # fmt: skip
    is_mel = np.array([int(r.dx == "MEL") for r in records], np.int64)
    pad = np.array([k for k, r in enumerate(records) if r.dataset == "pad"], np.int64)
    labelled = np.array([getattr(r, "fst_source", "label") == "label" for r in records], bool)
    group = np.array([r.fst if lab else "unknown" for r, lab in zip(records, labelled, strict=True)], dtype=object)
    fst = group[pad]
    gap_groups = [g for g in ROMAN
                  if (fst == g).any() and is_sufficient(int((fst == g).sum()), int(y[pad][fst == g].sum()))]  # fmt: skip
    cells_ext = [ext[is_mel[ext] == v] for v in (0, 1)]
    cells_pad = [pad[(fst == g) & (y[pad] == v)] for g in sorted(set(fst)) for v in (0, 1)]
    cells_ext = [c for c in cells_ext if len(c)]
    cells_pad = [c for c in cells_pad if len(c)]

    def stats(ix_ext: np.ndarray, ix_pad: np.ndarray) -> np.ndarray:
        out = np.full(4, np.nan)
        if len(ix_ext):
            out[0] = auroc(is_mel[ix_ext], p_c[ix_ext, MEL]) - auroc(is_mel[ix_ext], p_t[ix_ext, MEL])
        if len(ix_pad):
            out[1] = auroc(y[ix_pad], m_c[ix_pad]) - auroc(y[ix_pad], m_t[ix_pad])
            if len(gap_groups) >= 2:
                by_group = [ix_pad[group[ix_pad] == g] for g in gap_groups]
                gaps = [max(a) - min(a) for a in ([auroc(y[ix], m[ix]) for ix in by_group] for m in (m_c, m_t))]
                out[2] = gaps[0] - gaps[1]
            il = ix_pad[labelled[ix_pad]]
            if len(il) and 0 < y[il].sum() < len(il):
                out[3] = auroc(y[il], m_c[il]) - auroc(y[il], m_t[il])
        return out

    point = stats(ext, pad)
    rng = np.random.default_rng([int(seed), 4242])
    boots = np.empty((n_boot, 4))
    for b in range(n_boot):
        ie = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in cells_ext]) if cells_ext else ext
        ip = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in cells_pad]) if cells_pad else pad
        boots[b] = stats(ie, ip)
    limits = (-gate["max_auroc_drop"], -gate["max_auroc_drop"], gate["max_gap_increase"], -gate["max_auroc_drop"])
    names = ("isic_external_auroc_diff", "pad_auroc_diff", "auroc_gap_diff", "pad_fst_labelled_auroc_diff")
    higher_is_better = (True, True, False, True)
    res: dict[str, Any] = {"n_boot": int(n_boot), "gap_groups": gap_groups,
                           "method": "paired stratified bootstrap (same resamples for candidate and teacher)"}  # fmt: skip
    for i, name in enumerate(names):
        lo, hi = percentile_ci(boots[:, i])
        lim = limits[i]
        resolved = None
        if not (math.isnan(lo) or math.isnan(hi)):
            if higher_is_better[i]:
                resolved = "met" if lo >= lim else ("missed" if hi < lim else None)
            else:
                resolved = "met" if hi <= lim else ("missed" if lo > lim else None)
        res[name] = {"value": _f(point[i]), "ci95": [_f(lo), _f(hi)], "limit": lim,
                     "op": ">=" if higher_is_better[i] else "<=", "resolved": resolved}  # fmt: skip
    return res


def _get(d: dict[str, Any], *path: str) -> float:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return float("nan")
        d = d[p]
    return float("nan") if d is None else float(d)


def gate_limits(cfg: Any) -> tuple[dict[str, float], dict[str, float]]:
    """``(gate limits, targets)`` from ``cfg`` (the fall-back constants when there is no config)."""
    if cfg is None:
        return dict(GATE_FALLBACK), dict(TARGETS_FALLBACK)
    g, t = cfg.gate, cfg.targets
    gate = {k: float(getattr(g, k)) for k in GATE_FALLBACK}
    targets = {k: getattr(t, k) for k in TARGETS_FALLBACK}
    return gate, targets


def gate_checks(result: dict[str, Any], gate: dict[str, float], targets: dict[str, float]) -> list[dict[str, Any]]:
    """Rows ``{kind: limit|target, name, value, bound, met}``; ``met`` None = not applicable (no data)."""
    c, t = result["candidate"], result["teacher"]
    rows: list[dict[str, Any]] = []

    def row(kind: str, name: str, value: float, op: str, bound: float, note: str = "") -> None:
        if kind == "limit" and math.isnan(value) and not math.isnan(bound):
            met = False  # measurable for the teacher but not for the candidate (e.g. NaN scores): never a pass
            note = (note + "; " if note else "") + "not measurable for the candidate"
        elif math.isnan(value) or math.isnan(bound):
            met = None
        elif op == "<":
            met = value < bound
        elif op == "<=":
            met = value <= bound + 1e-12
        else:
            met = value >= bound - 1e-12
        rows.append({"kind": kind, "name": name, "value": _f(value), "op": op, "bound": _f(bound), "met": met,
                     "note": note})  # fmt: skip

    size = result["size_mb"]
    lat = _get(result, "latency", "ratio_p50")
    ext_c, ext_t = _get(c, "isic_external_mel_vs_nv", "auroc"), _get(t, "isic_external_mel_vs_nv", "auroc")
    pad_c, pad_t = _get(c, "pad_malignancy", "overall", "auroc"), _get(t, "pad_malignancy", "overall", "auroc")
    gap_c, gap_t = _get(c, "pad_malignancy", "auroc_gap"), _get(t, "pad_malignancy", "auroc_gap")
    row("limit", "size (MB)", size, "<", gate["max_size_mb"])
    row("limit", "latency / teacher (p50, batch 1)", lat, "<=", gate["max_latency_ratio"])
    row("limit", "ISIC external mel-vs-nv AUROC", ext_c, ">=", ext_t - gate["max_auroc_drop"],
        f"teacher {ext_t:.4f} - {gate['max_auroc_drop']}")
    row("limit", "PAD malignancy AUROC", pad_c, ">=", pad_t - gate["max_auroc_drop"],
        f"teacher {pad_t:.4f} - {gate['max_auroc_drop']}")
    note = f"teacher {gap_t:.4f} + {gate['max_gap_increase']}"
    if math.isnan(gap_c) and math.isnan(gap_t):
        note = "fewer than two sufficient FST groups"
    row("limit", "PAD per-FST AUROC gap", gap_c, "<=", gap_t + gate["max_gap_increase"], note)
    row("target", "size (MB)", size, "<=", targets["size_mb"])
    row("target", "MACs / teacher", result["macs_ratio"], "<=", targets["macs_ratio"])
    row("target", "latency / teacher", lat, "<=", targets["latency_ratio"])
    row("target", "ISIC external mel-vs-nv AUROC", ext_c, ">=", targets["isic_external_auroc"])
    row("target", "PAD malignancy AUROC (with metadata)", pad_c, ">=", targets["pad_auroc"])
    groups = (c.get("pad_malignancy") or {}).get("groups", {})
    for g in ROMAN:
        gm = groups.get(g)
        if gm is None:
            continue
        n, n_pos = int(gm["n"]), int(gm["n_pos"])
        if n >= targets["fst_min_n"] and min(n_pos, n - n_pos) >= 5:
            row("target", f"FST {g} AUROC (n={n})", _get(gm, "auroc"), ">=", targets["fst_group_auroc"])
        else:
            rows.append({"kind": "target", "name": f"FST {g} AUROC (n={n})", "value": None, "op": ">=",
                         "bound": targets["fst_group_auroc"], "met": None,
                         "note": f"too few to judge (needs n >= {targets['fst_min_n']} with >= 5 positives and "
                                 f">= 5 negatives; has {n_pos}/{n - n_pos})"})  # fmt: skip
    row("target", "PAD per-FST AUROC gap", gap_c, "<=", targets["fst_gap"])
    return rows


def _fmt(v: Any, name: str = "") -> str:
    if v is None:
        return "n/a"
    if "MB" in name:
        return f"{v:.2f}"
    return f"{v:.4f}"


def format_table(result: dict[str, Any]) -> str:
    c, t = result["candidate"], result["teacher"]
    lines = [
        f"model      {result['model']}  ({result['size_mb']:.2f} MB, sha256 {result['sha256'][:12]})",
        f"teacher    {result['teacher_model']}  ({result['teacher_size_mb']:.2f} MB)",
        f"data       {result['data']['source']}: {result['data']['n']} images "
        f"(ISIC external {result['data']['isic_external']}, PAD {result['data']['pad']}); ham10000 pool excluded",
        f"MACs       {result['macs'] / 1e9:.3f} G vs teacher {result['teacher_macs'] / 1e9:.3f} G "
        f"(ratio {result['macs_ratio']:.3f}); params {result['params'] / 1e6:.2f} M vs {result['teacher_params'] / 1e6:.2f} M",
        f"latency    batch 1, {result['latency']['threads']} threads, {result['latency']['rounds']} alternating rounds: "
        f"p50 {result['latency']['candidate']['p50_ms']:.1f} ms vs teacher {result['latency']['teacher']['p50_ms']:.1f} ms "
        f"(ratio {result['latency']['ratio_p50']:.3f}; p95 ratio {result['latency']['ratio_p95']:.3f})",
        f"agreement  top-1 with the teacher {result['top1_agreement']:.4f} (n={result['data']['n']})",
        "",
        f"{'metric':<38} {'candidate':>22} {'teacher':>22}",
    ]

    def ci(d: dict[str, Any] | None) -> str:
        if not d or d.get("auroc") is None:
            return "n/a"
        lo, hi = d.get("auroc_ci95") or [None, None]
        s = f"{d['auroc']:.3f}"
        if lo is not None:
            s += f" [{lo:.3f},{hi:.3f}]"
        return s

    lines.append(f"{'ISIC external mel-vs-nv AUROC':<38} {ci(c.get('isic_external_mel_vs_nv')):>22} "
                 f"{ci(t.get('isic_external_mel_vs_nv')):>22}")  # fmt: skip
    lines.append(f"{'ISIC external malignancy AUROC':<38} {ci(c.get('isic_external_malignancy')):>22} "
                 f"{ci(t.get('isic_external_malignancy')):>22}")  # fmt: skip
    lines.append(f"{'PAD malignancy AUROC':<38} {ci((c.get('pad_malignancy') or {}).get('overall')):>22} "
                 f"{ci((t.get('pad_malignancy') or {}).get('overall')):>22}")  # fmt: skip
    lines.append(f"{'  FST-labelled (biopsied) only':<38} {ci(c.get('pad_malignancy_fst_labelled')):>22} "
                 f"{ci(t.get('pad_malignancy_fst_labelled')):>22}")  # fmt: skip
    nm = result.get("pad_fst_labelled_without_metadata")
    if nm:
        lines.append(f"{'  ... with age/sex/site left out':<38} {ci(nm.get('candidate')):>22} "
                     f"{ci(nm.get('teacher')):>22}")  # fmt: skip
    cg = (c.get("pad_malignancy") or {}).get("groups", {})
    tg = (t.get("pad_malignancy") or {}).get("groups", {})
    for g in (*ROMAN, "unknown"):
        if g not in cg:
            continue
        d = cg[g]
        tag = f"  FST {g} (n={d['n']}, pos={d['n_pos']})" + ("" if d["sufficient"] else " insufficient")
        lines.append(f"{tag:<38} {ci(d) if d['sufficient'] else 'withheld':>22} "
                     f"{ci(tg.get(g)) if d['sufficient'] else 'withheld':>22}")  # fmt: skip
    gc = (c.get("pad_malignancy") or {}).get("auroc_gap")
    gt = (t.get("pad_malignancy") or {}).get("auroc_gap")
    lines.append(f"{'  per-FST AUROC gap':<38} {_fmt(gc):>22} {_fmt(gt):>22}")
    lines.append(f"{'overall malignancy AUROC (val)':<38} {ci(c.get('overall_malignancy')):>22} "
                 f"{ci(t.get('overall_malignancy')):>22}")  # fmt: skip
    lines += ["", f"{'kind':<7} {'check':<40} {'value':>9}   {'bound':>12}  result"]
    for r in result["checks"]:
        status = {True: "met", False: "MISSED", None: "n/a"}[r["met"]]
        bound = f"{r['op']} {_fmt(r['bound'], r['name'])}"
        note = f"  ({r['note']})" if r.get("note") else ""
        lines.append(f"{r['kind']:<7} {r['name']:<40} {_fmt(r['value'], r['name']):>9}   {bound:>12}  {status}{note}")
    paired = result.get("paired")
    if paired:
        lines += ["", f"paired bootstrap, candidate - teacher ({paired['n_boot']} resamples; informational, the gate "
                      "compares point estimates):"]  # fmt: skip
        for key, label in (("isic_external_auroc_diff", "ISIC external AUROC"), ("pad_auroc_diff", "PAD AUROC"),
                           ("pad_fst_labelled_auroc_diff", "PAD AUROC, FST-labelled"),
                           ("auroc_gap_diff", "per-FST AUROC gap")):  # fmt: skip
            d = paired.get(key) or {}
            if d.get("value") is None:
                continue
            lo, hi = d["ci95"]
            verdict = {"met": "CI within the limit", "missed": "CI beyond the limit",
                       None: "CI straddles the limit: this split cannot resolve it"}[d["resolved"]]  # fmt: skip
            ci_s = f"[{lo:+.3f}, {hi:+.3f}]" if lo is not None else "[n/a]"
            lines.append(f"  {label:<24} {d['value']:+.4f} {ci_s:>18}  limit {d['op']} {d['limit']:+.3f}  ({verdict})")
    lines.append("")
    lines.append("GATE: " + ("PASSED (every limit met)" if result["gate_passed"]
                             else "FAILED: " + ", ".join(r["name"] for r in result["checks"]
                                                         if r["kind"] == "limit" and r["met"] is False)))  # fmt: skip
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------------


def default_teacher() -> Path:
    from .export import default_models_dir

    return default_models_dir() / "reference_fp32.onnx"


def resolve_model(arg: str | os.PathLike) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """(onnx path, card path or None, card dict or None) for a card .json or an .onnx (its .json if present)."""
    p = Path(arg)
    if p.suffix == ".json":
        card = json.loads(p.read_text(encoding="utf-8"))
        return p.parent / card["file"], p, card
    cand = p.with_suffix(".json")
    if cand.is_file():
        with contextlib.suppress(Exception):
            card = json.loads(cand.read_text(encoding="utf-8"))
            if card.get("file") == p.name:
                return p, cand, card
    return p, None, None


def validate(
    model: str | os.PathLike,
    *,
    cfg: Any = None,
    teacher: str | os.PathLike | None = None,
    es: EvalSet | None = None,
    threads: int = 2,
    rounds: int = 20,
    n_boot: int = 1000,
    out: str | os.PathLike | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run the gate on ``model`` (card or ONNX); returns the result dict (``gate_passed``, ``checks``, ...)."""
    t_start = time.time()
    if cfg is None:
        with contextlib.suppress(Exception):
            from .config import load_config

            cfg = load_config()
    gate, targets = gate_limits(cfg)
    onnx_path, card_path, card = resolve_model(model)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"model file not found: {onnx_path}")
    teacher_path = Path(teacher) if teacher else default_teacher()
    if not teacher_path.is_file():
        from .export import export_reference_fp32

        log(f"validate: exporting the FP32 teacher to {teacher_path}")
        export_reference_fp32(teacher_path)
    threshold = float(card["threshold"]) if card else 0.5
    seed = int(cfg.run.seed) if cfg is not None else 0
    if es is None:
        es = eval_set(cfg, "val", log=log)
    t_sha = _file_sha256(teacher_path)
    c_sha = _file_sha256(onnx_path)
    p_t = cached_probs(teacher_path, es, threads=threads, log=log, model_sha256=t_sha)
    p_c = cached_probs(onnx_path, es, threads=threads, log=log, model_sha256=c_sha)
    m_c = count_macs_params(onnx_path)
    m_t = count_macs_params(teacher_path)
    lat = relative_latency(onnx_path, teacher_path, es.images[0], es.meta[0], threads=threads, rounds=rounds)
    recs = es.records
    result: dict[str, Any] = {
        "model": str(onnx_path),
        "card": str(card_path) if card_path else None,
        "sha256": c_sha,
        "size_bytes": onnx_path.stat().st_size,
        "size_mb": onnx_path.stat().st_size / 1e6,
        "teacher_model": str(teacher_path),
        "teacher_sha256": t_sha,
        "teacher_size_mb": teacher_path.stat().st_size / 1e6,
        "data": {"source": es.source, "split": "val", "n": len(recs),
                 "isic_external": sum(r.dataset == "isic" and r.pool == "external" for r in recs),
                 "pad": sum(r.dataset == "pad" for r in recs),
                 "ham10000": sum(r.pool == "ham10000" for r in recs)},  # fmt: skip
        "macs": m_c["macs"], "params": m_c["params"], "teacher_macs": m_t["macs"], "teacher_params": m_t["params"],
        "macs_ratio": m_c["macs"] / m_t["macs"] if m_t["macs"] else float("nan"),
        "latency": lat,
        "top1_agreement": top1_agreement(p_t, p_c),
        "candidate": evaluate(p_c, recs, threshold=threshold, n_boot=n_boot, seed=seed),
        "teacher": evaluate(p_t, recs, threshold=threshold, n_boot=n_boot, seed=seed),
        "gate_limits": gate,
        "targets": targets,
        "config": getattr(cfg, "source", None) or "built-in fall-back constants",
    }
    if result["data"]["ham10000"]:
        raise RuntimeError("the validation split contains ham10000-pool images; refusing to validate on them")
    result["checks"] = gate_checks(result, gate, targets)
    result["paired"] = paired_differences(p_c, p_t, recs, gate, n_boot=n_boot, seed=seed)
    nm = without_metadata(onnx_path, teacher_path, es, threshold=threshold, threads=threads, n_boot=n_boot,
                          seed=seed, log=log, model_sha256=c_sha, teacher_sha256=t_sha)  # fmt: skip
    if nm:
        nm["candidate_with_metadata"] = result["candidate"].get("pad_malignancy_fst_labelled")
        result["pad_fst_labelled_without_metadata"] = nm
    result["gate_passed"] = all(r["met"] is not False for r in result["checks"] if r["kind"] == "limit")
    result["targets_met"] = sum(r["met"] is True for r in result["checks"] if r["kind"] == "target")
    result["targets_total"] = sum(r["kind"] == "target" for r in result["checks"])
    result["seconds"] = round(time.time() - t_start, 1)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return result


def audit_labelled_set(card: str | os.PathLike, labels_csv: str | os.PathLike, images_dir: str | os.PathLike | None = None,
                       *, grouping: str = "type", n_boot: int = 1000, seed: int = 0, threads: int = 2,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """A labelled set of the user's (e.g. Fitzpatrick17k's ``labels.csv``) audited with the app's own table reader
    and audit run (:mod:`mendicant_desktop.app.audit_run`, what ``--audit`` runs): per skin-type group AUROC with
    CIs, the label-vs-estimated counts, and malignant vs benign neoplasms when the file has a lesion category.
    Informational, never gated. ``images_dir`` defaults to ``images/`` beside the labels file."""
    from mendicant_desktop.app.audit_run import load_audit_inputs, run_audit
    from mendicant_desktop.app.model import load_engine

    labels_csv = Path(labels_csv)
    images = Path(images_dir) if images_dir else labels_csv.parent / "images"
    labels, metadata = load_audit_inputs(labels_csv, images)
    engine = load_engine(card, threads)
    if log:
        log(f"validate: auditing {len(labels.rows)} labelled images of {labels_csv} ({grouping} groups)")
    run = run_audit(engine, labels, metadata, n_boot=n_boot, seed=seed, workers=threads, images_dir=images,
                    grouping=grouping)
    out: dict[str, Any] = {
        "labels": str(labels_csv), "images": str(images), "grouping": grouping, "n_audited": len(run.scores),
        "failed": len(run.failed), "skipped": len(run.skipped),
        "fst_source_counts": {s: run.fst_source.count(s) for s in sorted(set(run.fst_source))},
        "malignant_vs_rest": run.result.to_dict() if run.result is not None else None,
    }
    if labels.has_partition:
        nr = run.neoplasm_result
        out["malignant_vs_benign_neoplasm"] = nr.to_dict() if nr is not None else None
    return out


def format_labelled_set(d: dict[str, Any]) -> str:
    """The labelled-set audit as text lines (AUROC [95% CI] per group; insufficient groups say so)."""
    lines = [f"labelled set {d['labels']} ({d['n_audited']} audited, {d['failed']} failed, {d['skipped']} unusable; "
             f"skin type from {d['fst_source_counts']}; groups: {d['grouping']})"]
    for key, title in (("malignant_vs_rest", "malignant vs the rest"),
                       ("malignant_vs_benign_neoplasm", "malignant vs benign neoplasms")):
        res = d.get(key)
        if res is None:
            continue
        cells = []
        for name, g in [("overall", res["overall"]), *res["groups"].items()]:
            if not g["sufficient"] and name != "overall":
                cells.append(f"{name} insufficient (n={g['n']})")
                continue
            lo, hi = g["auroc_ci95"]
            ci = f" [{lo:.3f}-{hi:.3f}]" if lo is not None and hi is not None else ""
            auc = "n/a" if g["auroc"] is None else f"{g['auroc']:.3f}"
            cells.append(f"{name} {auc}{ci} (n={g['n']})")
        lines.append(f"  {title}: " + "; ".join(cells))
    return "\n".join(lines)


def without_metadata(model: Path, teacher: Path, es: EvalSet, *, threshold: float, threads: int = 2,
                     n_boot: int = 1000, seed: int = 0, log: Callable[[str], None] | None = None,
                     model_sha256: str | None = None, teacher_sha256: str | None = None) -> dict[str, Any] | None:  # fmt: skip
    """The biopsied (clinician-FST) PAD images scored with age, sex and site left out, as when a user skips the
    optional patient details: AUROC and sensitivity/specificity at ``threshold`` for the candidate, AUROC for the
    teacher. ``None`` without such images. Not gated: it says how much the model leans on the metadata."""
    from mendicant_desktop.core.metadata import encode_metadata

    lab = np.array([k for k, r in enumerate(es.records)
                    if r.dataset == "pad" and getattr(r, "fst_source", "label") == "label"], np.int64)  # fmt: skip
    if not len(lab):
        return None
    y = np.array([int(es.records[k].malignant) for k in lab], np.int64)
    if not 0 < y.sum() < len(y):
        return None
    blank = np.repeat(encode_metadata(None).astype(np.float32)[None], len(lab), axis=0)
    sub = EvalSet(records=[es.records[k] for k in lab], images=_RowView(es.images, lab), meta=blank,
                  source=f"{es.source} (PAD FST-labelled, metadata left out)")  # fmt: skip
    out: dict[str, Any] = {"n": len(lab), "n_pos": int(y.sum()), "threshold": float(threshold)}
    for who, path, sha in (("candidate", model, model_sha256), ("teacher", teacher, teacher_sha256)):
        p = cached_probs(path, sub, threads=threads, log=log, model_sha256=sha)
        res = audit(malignancy(p), y, ["unknown"] * len(lab), threshold, n_boot=n_boot, seed=seed, fst_source="label")
        out[who] = res.overall.to_dict()
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return _f(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def run_stage(cfg: Any, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
              argv: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Pipeline stage: validate ``argv[0]`` or the run's INT8 student.

    Run on its own (``python -m compression validate``) a missed limit raises SystemExit(1). Inside ``build``
    (``--no-fail``, passed by the build driver) it only records the result, so the report stage still
    documents a failed gate; the ``ship`` stage then refuses the candidate and ``build`` exits 1.
    """
    run_dir = Path(run_dir)
    args = [a for a in (argv or []) if a != "--no-fail"]
    no_fail = len(args) != len(argv or [])
    model = args[0] if args else os.environ.get("MENDICANT_MODEL") or str(run_dir / "quantize" / "student_int8.onnx")
    res = validate(model, cfg=cfg, out=run_dir / "validate" / "validate.json", log=log)
    print(format_table(res))
    if not res["gate_passed"] and not no_fail:
        raise SystemExit(1)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compression.validate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=os.environ.get("MENDICANT_MODEL"),
                   help="model card (.json) or ONNX file (default: $MENDICANT_MODEL)")
    p.add_argument("--teacher", default=None, help="FP32 teacher ONNX (default: the models cache's reference_fp32.onnx)")
    p.add_argument("--config", default=None, help="config TOML (default: compression/config.toml)")
    p.add_argument("--out", default=None, help="write the JSON results here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=20, help="alternating latency rounds")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--labels", metavar="LABELS.csv",
                   help="also audit this labelled set with the app's reader (e.g. fitzpatrick17k_clinical/labels.csv); "
                        "informational, not gated; needs a model card")
    p.add_argument("--images", metavar="DIR", help="folder of --labels' images (default: images/ beside it)")
    p.add_argument("--fst-grouping", choices=("type", "ddi"), default="type",
                   help="skin-type groups of the --labels audit: each type, or DDI-style I-II/III-IV/V-VI")
    a = p.parse_args(argv)
    if not a.model:
        p.print_usage(sys.stderr)
        print("error: give a model card or ONNX file (or set MENDICANT_MODEL)", file=sys.stderr)
        return 2
    card_path = resolve_model(a.model)[1] if a.labels else None
    if a.labels and (card_path is None or not Path(a.labels).is_file()):
        print("error: --labels needs an existing labels file and a model card (.json), not a bare ONNX file",
              file=sys.stderr)
        return 2
    cfg = None
    try:
        from .config import load_config

        cfg = load_config(a.config)
    except Exception as exc:  # noqa: BLE001 - a broken config falls back to the same constants, loudly
        if a.config:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
        print(f"validate: config unavailable ({exc}); using the built-in gate constants", file=sys.stderr)
    out = a.out
    if out is None and cfg is not None:
        out = cfg.run_dir() / "validate" / f"{Path(a.model).stem}.validate.json"
    try:
        res = validate(a.model, cfg=cfg, teacher=a.teacher, threads=a.threads, rounds=a.rounds, n_boot=a.n_boot,
                       out=out)  # fmt: skip
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(res))
    if a.labels:
        res["labelled_set"] = audit_labelled_set(card_path, a.labels, a.images, grouping=a.fst_grouping,
                                                 n_boot=a.n_boot, threads=a.threads, log=print)
        print(format_labelled_set(res["labelled_set"]))
        if out is not None:
            Path(out).write_text(json.dumps(res, indent=2, default=_json_default) + "\n", encoding="utf-8")
    if out is not None:
        print(f"results: {out} ({res['seconds']:.0f}s)")
    return 0 if res["gate_passed"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
