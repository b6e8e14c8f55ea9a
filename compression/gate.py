"""The gate of the adapted track: the INT8 candidate against the adapted teacher in FP32, on the gate split only.

Why a separate split: model selection (the heads' C, the threshold, the format) read the select split; a gate on
the same images would pass by tuning. Every check is computed here, on this machine, with no prediction cache:

- AUROC >= teacher - ``gate.max_auroc_drop`` on ISIC external (MEL vs NV), PAD (clinician-FST-labelled images)
  and Fitzpatrick17k (malignant vs rest);
- each data set's per-group AUROC gap (DDI groups I-II / III-IV / V-VI with n >= 30, >= 5 of each class)
  <= the teacher's + ``gate.max_gap_increase``;
- size < ``gate.max_size_mb``; batch-1 p50 latency <= ``gate.max_latency_ratio`` x the FP32 teacher's, measured
  side by side in this process.

A check that cannot be computed (too few images, a missing group, NaN) fails; nothing is "not applicable". The
targets of ``[targets]`` are reported met or missed, never enforced. The result records the split manifest's
sha256, every limit, both models' sha256, the CPU's features and the library versions; ``ship`` refuses a result
that lacks any of them or whose split no longer matches.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.cpu import cpu_features, describe_cpu

from .adapt import (
    CLASSES,
    DDI_GROUPS,
    QUESTIONS,
    SplitData,
    evaluate,
    int8_agreement,
    library_versions,
    load_split,
    metadata_matrix,
    ort_probs,
)

#: The limits a gate result must carry (names of ``[gate]`` keys); ship refuses a result without any of them.
GATE_LIMITS: tuple[str, ...] = ("max_auroc_drop", "max_gap_increase", "max_size_mb", "max_latency_ratio")
GAP_QUESTIONS: tuple[str, ...] = ("pad_fst_labelled", "fitz_malignant")


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(float(x))


def _check(name: str, value: Any, op: str, bound: float, note: str = "") -> dict[str, Any]:
    ok = _finite(value) and (float(value) <= bound + 1e-12 if op == "<=" else float(value) >= bound - 1e-12)
    if op == "<":
        ok = _finite(value) and float(value) < bound
    return {"kind": "limit", "name": name, "value": float(value) if _finite(value) else None, "op": op,
            "bound": float(bound), "met": bool(ok),
            "note": note if _finite(value) else (note + "; " if note else "") + "not computable: fails"}  # fmt: skip


def _target(name: str, value: Any, op: str, bound: float) -> dict[str, Any]:
    row = _check(name, value, op, bound)
    row["kind"] = "target"
    return row


def latency(candidate: Path, teacher: Path, sd: SplitData, *, threads: int = 2, rounds: int = 30) -> dict[str, Any]:
    """Batch-1 latency of both models on one real gate image, alternating runs in this process."""
    from mendicant_desktop.core.preprocess import MODEL_SIZE, load_image, preprocess

    from .validate import relative_latency

    i = int(sd.rows("gate")[0])
    img = preprocess(load_image(sd.shared / sd.records[i].relpath), MODEL_SIZE)
    meta = metadata_matrix([sd.records[i]])[0]
    out = relative_latency(candidate, teacher, img, meta, threads=threads, rounds=rounds)
    for k in ("candidate", "teacher"):
        out[k]["p50_ms"] = float(out[k]["p50_ms"])
    return out


def gate_checks(ev_c: dict[str, Any], ev_t: dict[str, Any], size_mb: float, lat_ratio: float,
                gate: Any) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    for q in QUESTIONS:
        t = ev_t[q]["auroc"]
        rows.append(_check(f"{q} AUROC", ev_c[q]["auroc"], ">=", t - gate.max_auroc_drop,
                           f"teacher {t:.4f} - {gate.max_auroc_drop}"))  # fmt: skip
    for q in GAP_QUESTIONS:
        t = ev_t[q]["gap"]
        bound = t + gate.max_gap_increase if _finite(t) else float("nan")
        row = _check(f"{q} per-group gap", ev_c[q]["gap"], "<=", bound if _finite(bound) else -1.0,
                     f"teacher {t:.4f} + {gate.max_gap_increase}" if _finite(t) else "teacher gap not computable")
        if not _finite(t):
            row["met"] = False
        rows.append(row)
    rows.append(_check("size MB", size_mb, "<", gate.max_size_mb))
    rows.append(_check("latency p50 ratio to the FP32 teacher", lat_ratio, "<=", gate.max_latency_ratio))
    return rows


def agreement_checks(agree: dict[str, Any]) -> list[dict[str, Any]]:
    """INT8 against its FP32 counterpart on the gate split, on this CPU: a model that does not reproduce the
    figures it is gated on is not shipped either (top-1 >= 0.97, malignancy Spearman >= 0.98, |ΔAUROC| <= 0.01)."""
    lim = agreement_limits()
    rows = [_check("INT8-vs-FP32 top-1 agreement", agree["top1_agreement"], ">=", lim["top1_agreement"]),
            _check("INT8-vs-FP32 malignancy Spearman", agree["malignancy_spearman"], ">=", lim["malignancy_spearman"])]
    for q, d in agree["delta_auroc"].items():
        rows.append(_check(f"INT8-vs-FP32 |ΔAUROC| {q}", abs(d) if _finite(d) else d, "<=", lim["max_abs_delta_auroc"]))
    return rows


def target_checks(ev_c: dict[str, Any], size_mb: float, lat_ratio: float, targets: Any) -> list[dict[str, Any]]:
    rows = [
        _target("ISIC external mel-vs-nv AUROC", ev_c["isic_mel_vs_nv"]["auroc"], ">=", targets.isic_external_auroc),
        _target("PAD FST-labelled malignancy AUROC", ev_c["pad_fst_labelled"]["auroc"], ">=",
                targets.pad_fst_labelled_auroc),
        _target("Fitzpatrick17k malignant-vs-rest AUROC", ev_c["fitz_malignant"]["auroc"], ">=", targets.fitz_auroc),
    ]  # fmt: skip
    for g in DDI_GROUPS:
        rows.append(_target(f"Fitzpatrick17k {g} AUROC", ev_c["fitz_malignant"]["groups"][g]["auroc"], ">=",
                            targets.fitz_group_auroc))  # fmt: skip
    rows.append(_target("Fitzpatrick17k per-group gap", ev_c["fitz_malignant"]["gap"], "<=", targets.fitz_gap))
    rows.append(_target("size MB", size_mb, "<=", targets.size_mb))
    vnni = bool(cpu_features().get("VNNI"))
    bound = targets.latency_ratio if vnni else targets.latency_ratio_avx2
    rows.append(_target(f"latency ratio ({'VNNI' if vnni else 'AVX2'} CPU)", lat_ratio, "<=", bound))
    return rows


def run_gate(cfg: Any, candidate: str | os.PathLike, teacher: str | os.PathLike, *,
             expected_split_sha: str | None = None, log: Callable[[str], None] = print,
             n_boot: int = 1000, teacher_probs: np.ndarray | None = None,
             candidate_probs: np.ndarray | None = None, split: SplitData | None = None) -> dict[str, Any]:  # fmt: skip
    """Score both models on the gate split and return the gate result (see the module docstring).

    ``teacher_probs`` / ``candidate_probs``: probabilities already computed on the gate rows (``sd.rows("gate")``
    order), used instead of scoring that model again: the test suite passes the FP32 teacher's committed ones, which
    any x86 CPU reproduces to 1e-5, and the INT8 ones it computed for another test. Latency always runs both files.
    ``split``: the already loaded split (saves re-hashing every image); by default it is loaded from ``cfg``.
    """
    t0 = time.perf_counter()
    candidate, teacher = Path(candidate), Path(teacher)
    sd = split if split is not None else load_split(cfg)
    if expected_split_sha is not None and expected_split_sha != sd.sha256:
        raise RuntimeError(f"gate: the split manifest {sd.sha256[:12]} differs from the build's "
                           f"{expected_split_sha[:12]}: the data or the split rule changed; rebuild")  # fmt: skip
    gate = sd.rows("gate")
    threads = cfg.run.threads
    shape = (len(gate), len(CLASSES))
    for name, given in (("candidate_probs", candidate_probs), ("teacher_probs", teacher_probs)):
        if given is not None and np.shape(given) != shape:
            raise ValueError(f"gate: {name} has shape {np.shape(given)}, the gate split needs {shape}")
    p_c = (np.asarray(candidate_probs, np.float32) if candidate_probs is not None
           else ort_probs(candidate, sd.records, gate, sd.shared, threads=threads))
    p_t = (np.asarray(teacher_probs, np.float32) if teacher_probs is not None
           else ort_probs(teacher, sd.records, gate, sd.shared, threads=threads))
    full_c = np.zeros((len(sd.records), len(CLASSES)), np.float32)
    full_t = full_c.copy()
    full_c[gate], full_t[gate] = p_c, p_t
    seed = cfg.run.seed
    ev_c = evaluate(full_c, sd.records, gate, n_boot=n_boot, seed=seed)
    ev_t = evaluate(full_t, sd.records, gate, n_boot=n_boot, seed=seed)
    lat = latency(candidate, teacher, sd, threads=threads)
    size_mb = candidate.stat().st_size / 1e6
    checks = gate_checks(ev_c, ev_t, size_mb, lat["ratio_p50"], cfg.gate)
    targets = target_checks(ev_c, size_mb, lat["ratio_p50"], cfg.targets)
    agree = int8_agreement(p_t, p_c, sd.records, gate)
    checks += agreement_checks(agree)
    res = {
        "gate_passed": all(c["met"] for c in checks),
        "checks": checks,
        "targets": targets,
        "gate_limits": {k: float(getattr(cfg.gate, k)) for k in GATE_LIMITS},
        "split": {"sha256": sd.sha256, "n_gate": int(len(gate))},
        "candidate": {"file": candidate.name, "sha256": hashlib.sha256(candidate.read_bytes()).hexdigest(),
                      "size_mb": size_mb, "metrics": ev_c},
        "teacher": {"file": teacher.name, "sha256": hashlib.sha256(teacher.read_bytes()).hexdigest(),
                    "size_mb": teacher.stat().st_size / 1e6, "metrics": ev_t},
        "agreement_int8_vs_fp32": agree,
        "latency": lat,
        "cpu": cpu_features(),
        "cpu_summary": describe_cpu(),
        "libraries": library_versions(),
        "n_boot": n_boot,
        "probabilities": {"candidate": "given" if candidate_probs is not None else "computed",
                          "teacher": "given" if teacher_probs is not None else "computed"},
        "seconds": time.perf_counter() - t0,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for c in checks:
        log(f"gate: {'ok  ' if c['met'] else 'FAIL'} {c['name']}: {c['value']} {c['op']} {c['bound']:.4f} {c['note']}")
    log(f"gate: {'PASSED' if res['gate_passed'] else 'FAILED'} on {describe_cpu()} in {res['seconds']:.0f} s")
    return res


def validate_result(res: dict[str, Any], cfg: Any, *, split_sha: str, model_sha: str) -> list[str]:
    """Why ``res`` may not ship (empty when it may): a failed or missing limit, looser limits than the config's,
    another split, another model."""
    why = []
    if res.get("gate_passed") is not True:
        why.append("the gate did not pass")
    if any(v != "computed" for v in (res.get("probabilities") or {}).values()):
        why.append("the gate was run on probabilities passed in, not computed by it")
    names = {c.get("name") for c in res.get("checks", []) if c.get("kind") == "limit"}
    needed = {f"{q} AUROC" for q in QUESTIONS} | {f"{q} per-group gap" for q in GAP_QUESTIONS} | {
        "size MB", "latency p50 ratio to the FP32 teacher", "INT8-vs-FP32 top-1 agreement",
        "INT8-vs-FP32 malignancy Spearman"} | {f"INT8-vs-FP32 |ΔAUROC| {q}" for q in QUESTIONS}
    if needed - names:
        why.append(f"the gate result lacks checks {sorted(needed - names)}")
    if any(c.get("met") is not True for c in res.get("checks", []) if c.get("kind") == "limit"):
        why.append("a gate check was missed")
    used = res.get("gate_limits") or {}
    for k in GATE_LIMITS:
        v, bound = used.get(k), float(getattr(cfg.gate, k))
        if not _finite(v):
            why.append(f"the gate result lacks the limit {k}")
        elif float(v) > bound + 1e-12:  # every limit is a maximum: larger is looser
            why.append(f"the gate ran with {k} = {v}, looser than the config's {bound}")
    if (res.get("split") or {}).get("sha256") != split_sha:
        why.append("the gate ran on another split manifest")
    if (res.get("candidate") or {}).get("sha256") != model_sha:
        why.append("the gate result is for another model file")
    return why


def write_result(res: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float), encoding="utf-8")
    tmp.replace(path)
    return path


def reference_rows(sd: SplitData, n: int, seed: int) -> list[int]:
    """A fixed, stratified set of ``n`` gate images (a third per data set) for the committed FP32 probabilities."""
    from .adapt import _rng

    gate = sd.rows("gate")
    out: list[int] = []
    for k, ds in enumerate(("isic", "pad", "fitz")):
        rows = [int(i) for i in gate if sd.records[i].dataset == ds]
        take = n // 3 + (1 if k < n % 3 else 0)
        pick = _rng(seed, "reference-rows", ds).permutation(len(rows))[:take]
        out.extend(sorted(rows[j] for j in pick))
    return out


def agreement_limits() -> dict[str, float]:
    """The INT8-vs-FP32 agreement a bundled model must keep on the CPU that runs it (issue 12)."""
    return {"top1_agreement": 0.97, "malignancy_spearman": 0.98, "max_abs_delta_auroc": 0.01}


def agreement_failures(agree: dict[str, Any], limits: dict[str, float] | None = None) -> list[str]:
    lim = limits or agreement_limits()
    bad = []
    if not agree["top1_agreement"] >= lim["top1_agreement"]:
        bad.append(f"top-1 agreement {agree['top1_agreement']:.4f} < {lim['top1_agreement']}")
    if not agree["malignancy_spearman"] >= lim["malignancy_spearman"]:
        bad.append(f"malignancy Spearman {agree['malignancy_spearman']:.4f} < {lim['malignancy_spearman']}")
    for q, d in agree["delta_auroc"].items():
        if not abs(d) <= lim["max_abs_delta_auroc"]:
            bad.append(f"|ΔAUROC| {q} {abs(d):.4f} > {lim['max_abs_delta_auroc']}")
    return bad


__all__: Sequence[str] = ("run_gate", "validate_result", "write_result", "reference_rows", "GATE_LIMITS",
                          "agreement_limits", "agreement_failures")  # fmt: skip
