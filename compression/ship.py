"""Ship stage: the gated INT8 student becomes the one bundled model (``python -m compression ship``).

Also the last stage of ``python -m compression build``. It refuses (exit status 1, ``resources/models`` not
touched) unless ``<run>/validate/validate.json`` exists, says the gate passed with limits no looser than the
config's ``[gate]``, and its sha256 is that of the current ``<run>/quantize/student_int8.onnx``; the gate is
never re-run, loosened or skipped here. Then, with the code shared with
:mod:`compression.bundle_reference`:

1. every image of the run's data index is scored with the FP32 teacher and the student (cached), the
   probabilities are checked for a quantized Softmax, and the agreement block is computed
   (:func:`score_models`, :func:`card_figures`);
2. the operating threshold is chosen on the train split of the ISIC external pool and PAD, and the card's
   metrics computed on the validation split (:func:`compression.card.card_metrics`);
3. provenance (:func:`compression.card.build_provenance`) gains a ``compression`` section: the run, the
   pruning and training summaries, the gate's checks, the config file's sha256 (:func:`compression_section`);
4. the card (``[ship] name/version``), the ONNX, the head sidecar and the calibration CSV (from the quantize
   stage's manifest) are staged in a temp folder inside the models folder, checked with ``ModelBundle.load`` +
   ``Engine`` there, moved into place card last, checked again, and only then are the previously bundled
   models' files removed, so exactly one model is bundled (:func:`remove_other_bundles`).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.bundle import make_card, sha256_file, write_card

__all__ = [
    "SHIPPED_FILE",
    "ShipRefused",
    "Scores",
    "check_gate",
    "write_calibration_csv",
    "score_models",
    "card_figures",
    "quantization_block",
    "compression_section",
    "assemble_card",
    "move_into_place",
    "verify_bundle",
    "remove_other_bundles",
    "resolve_models_dir",
    "ship",
    "run_stage",
]

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FILE = "student_int8.onnx"
THRESHOLD_POOLS = ("external", "pad")
BUNDLE_SUFFIXES = (".onnx", ".head.npz", ".calibration.csv", ".selfcheck.npz", ".reference_probs.csv", ".domain.npz",
                   ".json")

Log = Callable[[str], None]


class ShipRefused(RuntimeError):
    """The student may not be shipped (gate missing, failed or stale, inputs missing); nothing was touched."""


# --------------------------------------------------------------------------------------------------
# The gate
# --------------------------------------------------------------------------------------------------


def _gate_limits(cfg: Any) -> dict[str, float]:
    from .validate import gate_limits

    return gate_limits(cfg)[0]


def check_gate(
    run_dir: str | os.PathLike, cfg: Any, model: str | os.PathLike | None = None
) -> dict[str, Any]:
    """The run's gate result for ``model`` (default ``<run>/quantize/student_int8.onnx``), or :class:`ShipRefused`.

    Requires ``<run>/validate/validate.json`` to exist, to say ``gate_passed``, to contain limit checks none
    of which was missed, to have been measured with limits no looser than ``cfg``'s ``[gate]``, and to carry
    the sha256 of the current model file.
    """
    run_dir = Path(run_dir)
    model = Path(model) if model is not None else run_dir / "quantize" / SHIPPED_FILE
    gate_path = run_dir / "validate" / "validate.json"
    if not model.is_file():
        raise ShipRefused(f"no student to ship: {model} does not exist (run the quantize stage)")
    if not gate_path.is_file():
        raise ShipRefused(
            f"no gate result: {gate_path} does not exist (run `python -m compression validate`)"
        )
    res = _read_json(gate_path, "gate result")
    limits = [r for r in res.get("checks") or [] if isinstance(r, dict) and r.get("kind") == "limit"]
    missed = [r for r in limits if r.get("met") is False]
    if res.get("gate_passed") is not True or missed:
        detail = "; ".join(
            f"{r.get('name')}: {r.get('value')} (needs {r.get('op')} {r.get('bound')})" for r in missed
        )
        raise ShipRefused(
            f"the gate FAILED for {res.get('model')} ({gate_path})" + (f": {detail}" if detail else "")
        )
    if not limits:
        raise ShipRefused(f"gate result {gate_path} lists no limit checks")
    used = res.get("gate_limits")
    if not isinstance(used, dict):
        raise ShipRefused(f"gate result {gate_path} does not record its limits (gate_limits)")
    for key, bound in _gate_limits(cfg).items():
        v = used.get(key)
        if not isinstance(v, (int, float)) or float(v) > bound + 1e-12:
            raise ShipRefused(f"gate result {gate_path} was measured with {key} = {v!r}, looser than the config's "
                              f"gate.{key} = {bound}: re-run `python -m compression validate`")  # fmt: skip
    sha = sha256_file(model)
    if res.get("sha256") != sha:
        raise ShipRefused(f"gate result {gate_path} is for another model ({res.get('model')}, sha256 "
                          f"{str(res.get('sha256'))[:12]}) than {model.name} (sha256 {sha[:12]}): "
                          "re-run `python -m compression validate` on the student")  # fmt: skip
    return res


# --------------------------------------------------------------------------------------------------
# Card pieces shared with compression.bundle_reference
# --------------------------------------------------------------------------------------------------


def write_calibration_csv(path: Path, records: Sequence[Any], positions: Sequence[int]) -> None:
    """The calibration manifest of a bundled model: one row per calibration image (repeats included)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["order", "relpath", "sha256", "pool", "dx", "fst", "fst_source"])
    for k, i in enumerate(positions):
        r = records[int(i)]
        w.writerow([k, r.relpath, r.sha256, r.pool, r.dx, r.fst, r.fst_source])
    path.write_text(buf.getvalue(), encoding="utf-8")


@dataclass
class Scores:
    """FP32 teacher (``p_ref``) and candidate (``p_q``) probabilities on every record, feature signal/noise."""

    p_ref: np.ndarray
    p_q: np.ndarray
    f_signal: float
    f_noise: float


def score_models(teacher: Path, candidate: Path, index: Any, *, threads: int = 2, log: Log = print,
                 what: str = "FP32 and INT8") -> Scores:  # fmt: skip
    """Both models on every image of ``index`` (joint pass cached by both sha256s; each model's predictions
    also go into the gate's per-model cache). Raises if the candidate's probabilities are stepped."""
    from .card import joint_pass
    from .quantize import probs_stepped
    from .validate import EvalSet, prediction_cache_dir, store_predictions

    records = index.records
    all_pos = np.arange(len(records))
    log(f"scoring all {len(records)} images with {what} ...")
    t_sha, c_sha = sha256_file(teacher), sha256_file(candidate)
    jcache = prediction_cache_dir() / f"joint_{t_sha[:16]}_{c_sha[:16]}.npz"
    if jcache.is_file():
        with np.load(jcache) as z:
            p_ref, p_q, f_sig, f_noise = z["p_ref"], z["p_q"], float(z["f_sig"]), float(z["f_noise"])
        log(f"  (reusing {jcache})")
    else:
        p_ref, p_q, f_sig, f_noise = joint_pass(teacher, candidate, index.images, index.meta, all_pos,
                                                threads=threads, log=log)  # fmt: skip
        jcache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(jcache, p_ref=p_ref, p_q=p_q, f_sig=f_sig, f_noise=f_noise)
    es = EvalSet(records=records, images=index.images, meta=np.asarray(index.meta), source="all")
    keys = es.keys()
    store_predictions(t_sha, keys, p_ref)
    store_predictions(c_sha, keys, p_q)
    if probs_stepped(p_q):
        raise RuntimeError("INT8 probabilities are stepped in 1/255: the Softmax was quantized")
    return Scores(p_ref=p_ref, p_q=p_q, f_signal=f_sig, f_noise=f_noise)


def card_figures(
    scores: Scores,
    records: Sequence[Any],
    *,
    calibration_relpaths: Sequence[str],
    chosen_on: str,
    seed: int,
    n_boot: int = 1000,
    agreement_label: str = "FP32-vs-INT8",
    full_pools: bool = True,
    log: Log = print,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(threshold info, agreement block, card metrics)``: agreement on every image, the threshold on the train
    split of the external and PAD pools (never on the validation split), metrics on the validation split."""
    from .card import MIN_SENSITIVITY, agreement_block, card_metrics, choose_threshold
    from .validate import malignancy

    p_ref, p_q = scores.p_ref, scores.p_q
    agree = agreement_block(p_ref, p_q, records, scores.f_signal, scores.f_noise)
    log(
        f"agreement: top-1 {agree['top1_agreement']:.4f}, max|dp| {agree['max_abs_diff_probs']:.4f}, "
        f"SQNR probs {agree['sqnr_db_probs']:.1f} dB, features {agree['sqnr_db_features']:.1f} dB (n={agree['n']})"
    )
    thr_idx = [k for k, r in enumerate(records) if r.split == "train" and r.pool in THRESHOLD_POOLS]
    y = np.array([records[k].malignant for k in thr_idx])
    thr = choose_threshold(malignancy(p_q[thr_idx]), y, MIN_SENSITIVITY)
    thr["chosen_on"] = chosen_on
    log(
        f"threshold: {thr['threshold']:.4f} (sensitivity {thr['sensitivity']:.3f}, specificity "
        f"{thr['specificity']:.3f} on n={thr['n']})"
    )
    metrics = card_metrics(p_q, p_ref, records, threshold_info=thr, calibration_relpaths=calibration_relpaths,
                           agreement_info=agree, seed=seed, n_boot=n_boot, agreement_label=agreement_label,
                           full_pools=full_pools)  # fmt: skip
    log("metrics: " + metrics["summary"])
    return thr, agree, metrics


def assemble_card(*, stage: Path, name: str, version: str, onnx_path: Path, head_path: Path, threshold: float,
                  metrics: dict[str, Any], provenance: dict[str, Any], limitations: list[str]) -> Path:  # fmt: skip
    """Write ``<stage>/<name>.json`` (hashes and sizes computed from the staged files); returns its path."""
    from .card import INTENDED_USE

    card = make_card(name=name, version=version, model_path=onnx_path, head_path=head_path, threshold=threshold,
                     metrics=metrics, provenance=provenance,
                     extra={"intended_use": INTENDED_USE, "limitations": limitations,
                            "documentation": "docs/model_card.md"})  # fmt: skip
    return write_card(card, stage / f"{name}.json")


def move_into_place(files: Sequence[Path], card: Path, out_dir: Path) -> Path:
    """Move the staged ``files`` into ``out_dir``, then the card (last, so no card names a missing file)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in files:
        os.replace(f, out_dir / f.name)
    dst = out_dir / card.name
    os.replace(card, dst)
    return dst


def verify_bundle(card_path: Path, image: Path, log: Log = print, *, threads: int = 2) -> dict[str, Any]:
    """``ModelBundle.load`` (hashes) and an ``Engine`` prediction with Grad-CAM on a real image."""
    from mendicant_desktop.core.bundle import ModelBundle
    from mendicant_desktop.core.inference import Engine
    from mendicant_desktop.core.preprocess import load_image

    bundle = ModelBundle.load(card_path)
    engine = Engine(bundle, threads=threads)
    pred = engine.predict(load_image(image), None, cam=True)[0]
    log(f"verify: ModelBundle.load + Engine OK on {image.name}: top {pred.top_class}, malignancy "
        f"{pred.malignancy:.3f}, risk {pred.risk}, cam {None if pred.cam is None else pred.cam.shape}")  # fmt: skip
    return {"image": image.name, "top_class": pred.top_class, "malignancy": float(pred.malignancy)}


def verify_installed(card_path: Path, image: Path, log: Log = print, *, threads: int = 2) -> None:
    """Verify the bundle in place; on failure remove it again (the card first) so the previous model stays."""
    try:
        verify_bundle(card_path, image, log, threads=threads)
    except Exception:
        for f in sorted(_bundle_files(card_path), key=lambda p: p != card_path):
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
        log(f"ship: the installed {card_path.name} failed verification; removed it again (previous model kept)")
        raise


def _bundle_files(card: Path) -> list[Path]:
    """A bundled model's files in its folder: ``<stem>`` + each of :data:`BUNDLE_SUFFIXES` and the names its card
    gives (model, head, calibration manifest, domain-check sidecar), plain names only."""
    folder, stem = card.parent, card.name[: -len(".json")]
    names = {stem + s for s in BUNDLE_SUFFIXES}
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        c = json.loads(card.read_text(encoding="utf-8"))
        names |= {c.get("file"), (c.get("head") or {}).get("file"),
                  ((c.get("provenance") or {}).get("calibration") or {}).get("manifest_file"),
                  (c.get("domain_check") or {}).get("sidecar")}  # fmt: skip
    plain = {
        n for n in names if isinstance(n, str) and n and n == Path(n).name and n.endswith(BUNDLE_SUFFIXES)
    }
    return sorted(folder / n for n in plain)


def remove_other_bundles(out_dir: Path, keep_card: Path, log: Log = print) -> list[Path]:
    """Delete every other model bundled in ``out_dir`` (its card first, then its files); returns what went."""
    keep = {p.name for p in _bundle_files(keep_card)}
    removed: list[Path] = []
    for card in sorted(out_dir.glob("*.json")):
        if card.name == keep_card.name:
            continue
        files = [f for f in _bundle_files(card) if f.name not in keep and f.is_file()]
        gone = []
        for f in sorted(files, key=lambda p: p != card):  # the card first: never a card without its model
            f.unlink()
            gone.append(f)
        removed += gone
        log(f"ship: removed the previously bundled model {card.stem}: {', '.join(f.name for f in gone)}")
    return removed


def resolve_models_dir(cfg: Any) -> Path:
    """``ship.models_dir`` ("" = the repository's ``resources/models``; relative to the repository root)."""
    raw = cfg.ship.models_dir
    if not raw:
        return REPO / "resources" / "models"
    p = Path(raw).expanduser()
    return p if p.is_absolute() else REPO / p


# --------------------------------------------------------------------------------------------------
# Student-specific provenance
# --------------------------------------------------------------------------------------------------


def quantization_block(onnx_path: Path) -> dict[str, Any]:
    """The card's ``quantization`` section from the ONNX's own metadata (written by the quantize stage)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    text = props.get("quantization", "")
    m = re.search(r"calibration=(\w+)", text)
    per_channel = "per_channel=False" not in text
    head_fp32 = "head_fp32=False" not in text
    return {
        "format": "ONNX QDQ, INT8 static",
        "tool": "onnxruntime.quantization.quant_pre_process + quantize_static (CalibrationDataReader)",
        "weights": "int8, symmetric, " + ("per channel" if per_channel else "per tensor"),
        "activations": "uint8, asymmetric, per tensor",
        "fp32_parts": (
            "head (/head/*: metadata branch and MLP), the global average pool feeding it, Softmax"
            if head_fp32
            else "none"
        ),
        "calibration_method": m.group(1) if m else "unknown",
        "cross_layer_equalization": (
            text.split("cross-layer equalization ", 1)[1]
            if "cross-layer equalization " in text
            else "none"
        ),
        "onnx_metadata": text,
        "checked": "no QuantizeLinear/DequantizeLinear in the head; probabilities not stepped in 1/255",
    }


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ShipRefused(f"{what} {path} does not exist: the card could not say how the student was made")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ShipRefused(f"{what} {path} is unreadable: {exc}") from None
    if not isinstance(data, dict):
        raise ShipRefused(f"{what} {path} is not a JSON object")
    return data


def _config_file(cfg: Any) -> dict[str, Any]:
    from .config import config_to_dict

    effective = hashlib.sha256(
        json.dumps(config_to_dict(cfg), sort_keys=True, default=str).encode()
    ).hexdigest()
    out: dict[str, Any] = {
        "file": None,
        "sha256": None,
        "matches_commit": None,
        "effective_sha256": effective,
    }
    src = Path(cfg.source) if getattr(cfg, "source", "") else None
    if src is None or not src.is_file():
        return out
    data = src.read_bytes()
    out["sha256"] = hashlib.sha256(data).hexdigest()
    try:
        rel = src.resolve().relative_to(REPO)
        out["file"] = rel.as_posix()
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            head = subprocess.run(["git", "-C", str(REPO), "show", f"HEAD:{rel.as_posix()}"], capture_output=True,
                                  timeout=20, check=True).stdout  # fmt: skip
            out["matches_commit"] = head == data
    except ValueError:
        out["file"] = str(src)
    return out


def compression_section(cfg: Any, run_dir: Path, gate: dict[str, Any], prune: dict[str, Any],
                        train: dict[str, Any], *, fingerprint_status: str) -> dict[str, Any]:  # fmt: skip
    """Provenance of the student: run, pruning, training, gate result and configuration."""
    steps = prune.get("steps")
    return {
        "run": run_dir.name,
        "pipeline": "python -m compression build: data, prune (FairPrune), train (distillation + labels), "
                    "quantize (INT8 static QDQ), validate (gate), ship",
        "pruning": {"source": "prune/report.json", "mac_ratio": prune.get("mac_ratio"),
                    "macs_before": prune.get("macs_before"), "macs_after": prune.get("macs_after"),
                    "params_before": prune.get("params_before"), "params_after": prune.get("params_after"),
                    "steps": len(steps) if isinstance(steps, list) else steps},
        "training": {"source": "train/metrics.json",
                     **{k: train.get(k) for k in ("best_epoch", "epochs_run", "stop_reason", "freeze_through",
                                                  "wall_seconds")}},
        "gate": {
            "source": "validate/validate.json",
            "passed": bool(gate.get("gate_passed")),
            "model_sha256": gate.get("sha256"),
            "teacher_sha256": gate.get("teacher_sha256"),
            "data": gate.get("data"),
            "limits": gate.get("gate_limits"),
            "checks": [{k: r.get(k) for k in ("kind", "name", "value", "op", "bound", "met")}
                       for r in gate.get("checks") or []],
            "size_mb": gate.get("size_mb"), "macs_ratio": gate.get("macs_ratio"), "params": gate.get("params"),
            "teacher_params": gate.get("teacher_params"),
            "latency_ratio_p50": (gate.get("latency") or {}).get("ratio_p50"),
            "paired_vs_teacher": gate.get("paired"),
        },
        "config": {**_config_file(cfg), "stage_fingerprint": fingerprint_status},
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Ship
# --------------------------------------------------------------------------------------------------


def _calibration_positions(manifest: dict[str, Any], records: Sequence[Any]) -> np.ndarray:
    images = manifest.get("images")
    if not isinstance(images, list) or not images:
        raise ShipRefused("quantize/quantize.json has no calibration manifest (calibration.images)")
    where = {r.relpath: k for k, r in enumerate(records)}
    pos: list[int] = []
    for item in images:
        relpath, sha = item[0], item[1]
        k = where.get(relpath)
        if k is None or records[k].sha256 != sha:
            raise ShipRefused(f"calibration image {relpath} is not in the run's data index with sha256 {sha[:12]}: "
                              "the data changed since the quantize stage")  # fmt: skip
        if records[k].split != "train":
            raise ShipRefused(f"calibration image {relpath} is in the {records[k].split!r} split, not train")
        pos.append(k)
    return np.asarray(pos, np.int64)


def _first_image(records: Sequence[Any], shared: Path) -> Path:
    for r in records:
        if r.dataset == "isic" and (shared / r.relpath).is_file():
            return shared / r.relpath
    for r in records:
        if (shared / r.relpath).is_file():
            return shared / r.relpath
    raise ShipRefused(f"no image of the run's data found under {shared} to verify the bundle with")


def _teacher_for(gate: dict[str, Any], teacher: Path | None) -> tuple[Path, str]:
    from .validate import default_teacher

    want = gate.get("teacher_sha256")
    cands = [Path(teacher)] if teacher else [default_teacher(), Path(str(gate.get("teacher_model") or ""))]
    for c in cands:
        if c.is_file() and c.suffix == ".onnx":
            sha = sha256_file(c)
            if sha == want:
                return c, sha
            if teacher:
                break
    raise ShipRefused(f"the FP32 teacher the gate was measured against (sha256 {str(want)[:12]}) is not available "
                      f"({', '.join(str(c) for c in cands)}): re-run `python -m compression validate`")  # fmt: skip


def ship(
    cfg: Any,
    run_dir: str | os.PathLike,
    *,
    models_dir: str | os.PathLike | None = None,
    teacher: str | os.PathLike | None = None,
    n_boot: int = 1000,
    verify_image: str | os.PathLike | None = None,
    log: Log = print,
) -> Path:
    """Bundle the run's gated INT8 student as ``cfg.ship.name``; returns the installed card's path.

    Raises :class:`ShipRefused` before touching the models folder when a precondition fails.
    """
    from .card import build_provenance, limitations
    from .data import load_index, shared_data_dir
    from .export import head_npz_path
    from .fingerprint import StageConfigMismatch, check_stage
    from .quantize import head_violations

    t0 = time.time()
    run_dir = Path(run_dir)
    qdir = run_dir / "quantize"
    student = qdir / SHIPPED_FILE
    gate = check_gate(run_dir, cfg, student)
    log(
        f"ship: gate passed for {student.name} (sha256 {gate['sha256'][:12]}, {run_dir / 'validate' / 'validate.json'})"
    )
    head_src = head_npz_path(student)
    if not head_src.is_file():
        raise ShipRefused(f"head sidecar {head_src} does not exist (re-run the quantize stage)")
    quant = _read_json(qdir / "quantize.json", "quantize result")
    manifest = quant.get("calibration")
    if not isinstance(manifest, dict):
        raise ShipRefused(f"{qdir / 'quantize.json'} has no calibration manifest")
    try:
        fp_status = check_stage(cfg, run_dir, "quantize")
    except StageConfigMismatch as exc:
        raise ShipRefused(str(exc)) from None
    prune = _read_json(run_dir / "prune" / "report.json", "pruning report")
    train = _read_json(run_dir / "train" / "metrics.json", "training summary")
    teacher_path, teacher_sha = _teacher_for(gate, Path(teacher) if teacher else None)
    import onnx

    bad = head_violations(onnx.load(str(student)))
    if bad:
        raise ShipRefused("the student's head is not FP32: " + "; ".join(bad[:3]))
    index = load_index(run_dir)
    records = index.records
    pos = _calibration_positions(manifest, records)
    image = Path(verify_image) if verify_image else _first_image(records, shared_data_dir(cfg))
    name, version = cfg.ship.name, cfg.ship.version
    out_dir = Path(models_dir) if models_dir is not None else resolve_models_dir(cfg)
    log(
        f"ship: {name} {version} -> {out_dir} (teacher {teacher_path.name}, {len(records)} images, "
        f"{len(pos)} calibration images)"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
    try:
        onnx_path, head = stage / f"{name}.onnx", stage / f"{name}.head.npz"
        shutil.copyfile(student, onnx_path)
        shutil.copyfile(head_src, head)
        if sha256_file(onnx_path) != gate["sha256"]:
            raise ShipRefused(f"{student} changed while being shipped (sha256 no longer the gated one)")
        calib_csv = stage / f"{name}.calibration.csv"
        write_calibration_csv(calib_csv, records, pos)
        scores = score_models(teacher_path, onnx_path, index, threads=cfg.run.threads, log=log,
                              what="the FP32 teacher and the INT8 student")  # fmt: skip
        thr, _agree, metrics = card_figures(
            scores, records, calibration_relpaths=[records[int(i)].relpath for i in pos], seed=cfg.run.seed,
            n_boot=n_boot, agreement_label="FP32-teacher-vs-INT8-student", full_pools=False, log=log,
            chosen_on="train split of the ISIC external pool and PAD (the pools the app meets; the ham10000 pool "
                      "is excluded because the teacher was trained on it), the INT8 student's scores",
        )  # fmt: skip
        by_pool: dict[str, int] = {}
        for i in sorted(set(pos.tolist())):
            by_pool[records[i].pool] = by_pool.get(records[i].pool, 0) + 1
        calibration = {k: v for k, v in manifest.items() if k != "images"}
        calibration.update({
            "method": quantization_block(onnx_path)["calibration_method"],
            "source": "real images only: train split of compression.data (never validation images); distinct "
                      "images per pool: " + ", ".join(f"{p} {n}" for p, n in sorted(by_pool.items())),
            "balancing": "FST-balanced (compression.quantize.fst_balanced_selection; PAD clinician label, else the "
                         "ITA estimate; 'unknown' not drawn): per_group gives the counts, groups V-VI repeated",
            "manifest_file": calib_csv.name,
            "manifest_file_sha256": sha256_file(calib_csv),
        })  # fmt: skip
        comp = compression_section(cfg, run_dir, gate, prune, train, fingerprint_status=fp_status)
        student_fp32 = qdir / "student_fp32.onnx"
        if student_fp32.is_file():
            comp["student_fp32_onnx_sha256"] = sha256_file(student_fp32)
        prov = build_provenance(records=records, calibration=calibration, quantization=quantization_block(onnx_path),
                                cfg=cfg, teacher_sha256=teacher_sha, teacher_file=teacher_path.name,
                                extra={"compression": comp}, built_by="python -m compression ship")  # fmt: skip
        card = assemble_card(stage=stage, name=name, version=version, onnx_path=onnx_path, head_path=head,
                             threshold=thr["threshold"], metrics=metrics, provenance=prov,
                             limitations=limitations(metrics, student={"mac_ratio": prune.get("mac_ratio"),
                                                                     "paired": gate.get("paired"),
                                                                     "without_metadata":
                                                                         gate.get("pad_fst_labelled_without_metadata")}))  # fmt: skip
        # Checked in the staging folder before anything moves, and again in place.
        verify_bundle(card, image, log, threads=cfg.run.threads)
        card_path = move_into_place([onnx_path, head, calib_csv], card, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    verify_installed(card_path, image, log, threads=cfg.run.threads)
    removed = remove_other_bundles(out_dir, card_path, log)
    cards = sorted(p.name for p in out_dir.glob("*.json"))
    if cards != [card_path.name]:
        log(f"ship: warning: {out_dir} holds several cards: {cards}")
    log(
        f"ship: {card_path} ({(out_dir / f'{name}.onnx').stat().st_size / 1e6:.1f} MB, threshold "
        f"{thr['threshold']:.4f}); removed {len(removed)} old file(s); {time.time() - t0:.0f}s"
    )
    return card_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compression ship", description=__doc__.split("\n\n")[0])
    p.add_argument("--models-dir", default=None, help="default: ship.models_dir (resources/models)")
    p.add_argument("--teacher", default=None, help="FP32 teacher ONNX (must be the one the gate measured)")
    p.add_argument("--n-boot", type=int, default=1000)
    return p


def run_stage(cfg: Any, run_dir: str | os.PathLike, *, log: Log = print,
              argv: Sequence[str] | None = None) -> Path:  # fmt: skip
    """Pipeline stage; raises SystemExit(1) when shipping is refused (nothing in the models folder touched)."""
    a = _parser().parse_args(list(argv or []))
    try:
        return ship(cfg, run_dir, models_dir=a.models_dir, teacher=a.teacher, n_boot=a.n_boot, log=log)
    except ShipRefused as exc:
        log(f"ship: REFUSED: {exc}")
        raise SystemExit(1) from None
