"""The Audit tab's work, without Qt: read a labelled CSV, score its images through the engine, audit.

The labels file is parsed by the headless audit (:func:`mendicant_desktop.cli.audit.read_labels`), so the tab
and ``--audit`` accept exactly the same columns and report the same unusable rows; age/sex/site columns are
read as ``--audit`` reads them (:func:`mendicant_desktop.cli.metadata_csv.load_metadata_csv`). The HTML export
is the ``--audit`` report (:mod:`mendicant_desktop.core.report_html`), without the Grad-CAM section.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mendicant_desktop.cli import UsageError
from mendicant_desktop.cli import audit as cli_audit
from mendicant_desktop.cli.metadata_csv import MetadataTable, load_metadata_csv
from mendicant_desktop.core import audit as core_audit
from mendicant_desktop.core import report_html
from mendicant_desktop.core.errors import CancelledError, ImageLoadError, MetadataError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import load_image, preprocess
from mendicant_desktop.core.skintone import estimate_skin_tone


@dataclass
class AuditRun:
    """Scored items, failures and the audit itself."""

    images: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    fst_source: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (image, reason)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # label rows that could not be used
    result: core_audit.AuditResult | None = None
    threshold: float = 0.5
    model: str = ""
    labels_path: str = ""
    images_dir: str = ""
    n_boot: int = 1000
    seed: int = 0

    def curves(self) -> dict[str, dict[str, np.ndarray]]:
        """ROC and calibration points overall and per group present."""
        s = np.asarray(self.scores, dtype=np.float64)
        y = np.asarray(self.labels, dtype=np.int8)
        g = np.asarray(self.groups, dtype=object)
        out: dict[str, dict[str, np.ndarray]] = {}
        names = ["overall"] + [n for n in core_audit.FST_GROUPS if np.any(g == n)]
        for name in names:
            m = np.ones(s.size, bool) if name == "overall" else g == name
            if not m.any():
                continue
            fpr, tpr, _ = core_audit.roc_curve(y[m], s[m])
            cal = core_audit.calibration_curve(y[m], s[m])
            out[name] = {"fpr": fpr, "tpr": tpr, "cal_x": cal.mean_predicted, "cal_y": cal.observed_rate,
                         "cal_n": cal.count}
        return out


def read_inputs(labels_csv: str | os.PathLike, images_dir: str | os.PathLike
                ) -> tuple[cli_audit.Labels, MetadataTable | None]:
    """The labels (as ``--audit`` reads them) and the metadata from their age/sex/site columns, if any.
    Raises ValueError with a readable message for a file that cannot be used at all."""
    path = os.fspath(labels_csv)
    try:
        labels = cli_audit.read_labels(path, os.fspath(images_dir))
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    metadata = None
    if labels.has_meta_columns:
        try:
            metadata = load_metadata_csv(path)
        except MetadataError as exc:
            raise ValueError(f"labels file metadata: {exc}") from None
    return labels, metadata


def run_audit(
    engine: Engine,
    labels_csv: str | os.PathLike,
    images_dir: str | os.PathLike,
    *,
    threshold: float,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 8,
    progress: Callable[[int, int, str], None] | None = None,
    is_cancelled: Callable[[], bool] | None = None,
) -> AuditRun:
    """Score every labelled image through ``engine`` (no Grad-CAM) and audit per skin type."""
    labels, metadata = read_inputs(labels_csv, images_dir)
    rows, skipped = labels.rows, labels.skipped
    if not rows:
        raise ValueError("no usable rows in the labels file"
                         + (f" (e.g. {skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    run = AuditRun(skipped=list(skipped), threshold=float(threshold), model=engine.card.name,
                   labels_path=os.path.abspath(labels_csv), images_dir=os.path.abspath(images_dir),
                   n_boot=int(n_boot), seed=int(seed))
    total = len(rows)
    pending: list[tuple[cli_audit.LabelRow, Metadata, np.ndarray, str, str]] = []

    def flush() -> None:
        if not pending:
            return
        x = np.stack([p[2] for p in pending])
        preds = engine.predict_preprocessed(x, [p[1] for p in pending], cam=False, threshold=threshold)
        for (row, _meta, _x, grp, src), pred in zip(pending, preds):
            run.images.append(row.image)
            run.scores.append(min(1.0, max(0.0, float(pred.malignancy))))
            run.labels.append(row.malignant)
            run.groups.append(grp)
            run.fst_source.append(src)
        pending.clear()

    for i, row in enumerate(rows):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("audit cancelled")
        rgb: np.ndarray | None = None
        rec = metadata.lookup(row.path) if metadata is not None else None
        if rec is not None and rec.error:
            run.failed.append((row.image, rec.error))
        else:
            try:
                rgb = load_image(row.path)
            except ImageLoadError as exc:
                run.failed.append((row.image, exc.reason))
        if rgb is not None:
            meta = rec.metadata if rec is not None and rec.metadata is not None else Metadata()
            if row.fst != "unknown":
                grp, src = row.fst, "label"
            else:
                est = estimate_skin_tone(rgb)
                grp, src = est.fst, "estimated"
            pending.append((row, meta, preprocess(rgb, engine.input_size), grp, src))
            if len(pending) >= batch_size:
                flush()
        if progress is not None and (i % 4 == 3 or i == total - 1):
            progress(i + 1, total + 1, f"scored {i + 1} of {total} images")
    flush()
    if not run.scores:
        raise ValueError(f"none of the {total} images could be scored (first failure: {run.failed[0][1]})"
                         if run.failed else "nothing to audit")
    if is_cancelled is not None and is_cancelled():
        raise CancelledError("audit cancelled")
    if progress is not None:
        progress(total, total + 1, f"bootstrapping confidence intervals ({n_boot} resamples)")
    run.result = core_audit.audit(run.scores, run.labels, run.groups, threshold, n_boot=n_boot, seed=seed,
                                  fst_source=run.fst_source, model=engine.card.name)
    if progress is not None:
        progress(total + 1, total + 1, "done")
    return run


# ---------------------------------------------------------------------------------------------------
# Presentation helpers shared by the tab and its exports
# ---------------------------------------------------------------------------------------------------

TABLE_COLUMNS = ("Skin type", "n", "Pos.", "AUROC (95% CI)", "Sensitivity (95% CI)",
                 "Specificity (95% CI)", "ECE", "FST from", "Note")


def _num(v: float, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(v: float, ci: tuple[float, float], digits: int = 2) -> str:
    if v is None or math.isnan(v):
        return "–"
    lo, hi = ci
    if math.isnan(lo) or math.isnan(hi):
        return _num(v, digits)
    return f"{v:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


def group_label(name: str) -> str:
    return {"overall": "All", "unknown": "Unknown"}.get(name, f"FST {name}")


def table_rows(result: core_audit.AuditResult) -> list[tuple[list[str], bool]]:
    """Rows for the table: (cells, sufficient). Insufficient groups never show bare numbers."""
    out = []
    for name, gm in [("overall", result.overall), *result.groups.items()]:
        suff = gm.sufficient or name == "overall"
        if suff:
            cells = [group_label(name), str(gm.n), str(gm.n_pos), _ci(gm.auroc, gm.auroc_ci95),
                     _ci(gm.sensitivity, gm.sensitivity_ci95), _ci(gm.specificity, gm.specificity_ci95),
                     _num(gm.ece, 3), gm.fst_source, "" if gm.sufficient else "too small for reliable figures"]
        else:
            why = (f"n = {gm.n} < {core_audit.MIN_GROUP_N}" if gm.n < core_audit.MIN_GROUP_N
                   else f"needs ≥ {core_audit.MIN_CLASS_N} positives and negatives")
            cells = [group_label(name), str(gm.n), str(gm.n_pos), "insufficient", "insufficient", "insufficient",
                     "insufficient", gm.fst_source, f"insufficient data ({why})"]
        out.append((cells, bool(suff)))
    return out


def gap_text(result: core_audit.AuditResult) -> str:
    if math.isnan(result.auroc_gap):
        return ("AUROC gap: not computable — fewer than two skin-type groups have enough images "
                f"(n ≥ {core_audit.MIN_GROUP_N} with ≥ {core_audit.MIN_CLASS_N} positives and negatives).")
    lo, hi = result.auroc_gap_ci95
    ci = "" if math.isnan(lo) else f" (95% CI {lo:.2f}–{hi:.2f})"
    groups = ", ".join(result.gap_groups)
    sens = "" if math.isnan(result.sensitivity_gap) else f"; sensitivity gap {result.sensitivity_gap:.2f}"
    return f"AUROC gap (max − min over FST {groups}): {result.auroc_gap:.2f}{ci}{sens}."


def to_csv(run: AuditRun) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["group", "n", "n_pos", "sufficient", "fst_source", "auroc", "auroc_lo", "auroc_hi",
                "sensitivity", "sens_lo", "sens_hi", "specificity", "spec_lo", "spec_hi", "ppv", "npv", "ece",
                "brier"])
    res = run.result
    assert res is not None
    for name, gm in [("overall", res.overall), *res.groups.items()]:
        withhold = not gm.sufficient and name != "overall"

        def f(v: float, withhold: bool = withhold) -> str:
            return "" if withhold or v is None or math.isnan(v) else f"{v:.4f}"

        w.writerow([name, gm.n, gm.n_pos, int(gm.sufficient), gm.fst_source, f(gm.auroc), f(gm.auroc_ci95[0]),
                    f(gm.auroc_ci95[1]), f(gm.sensitivity), f(gm.sensitivity_ci95[0]), f(gm.sensitivity_ci95[1]),
                    f(gm.specificity), f(gm.specificity_ci95[0]), f(gm.specificity_ci95[1]), f(gm.ppv), f(gm.npv),
                    f(gm.ece), f(gm.brier)])
    gap = res.auroc_gap
    w.writerow([])
    w.writerow(["auroc_gap", "" if math.isnan(gap) else f"{gap:.4f}",
                "" if math.isnan(res.auroc_gap_ci95[0]) else f"{res.auroc_gap_ci95[0]:.4f}",
                "" if math.isnan(res.auroc_gap_ci95[1]) else f"{res.auroc_gap_ci95[1]:.4f}"])
    return buf.getvalue()


def model_card_dict(card: Any) -> dict[str, Any]:
    """The model card as ``--audit`` hands it to the report (``card`` is an engine's ``ModelCard``)."""
    return {**card.raw, "name": card.name, "version": card.version, "sha256": card.sha256,
            "size_bytes": card.size_bytes, "threshold": card.threshold, "provenance": card.provenance,
            "metrics": card.metrics}


def to_report(run: AuditRun, model_card: Mapping[str, Any] | None = None, app_version: str = "") -> report_html.AuditReport:
    """The ``--audit`` report for a GUI run. The tab scores without Grad-CAM, so there is no explanation
    analysis (the report says so) and no per-image rows."""
    card = dict(model_card) if model_card else {"name": run.model, "threshold": run.threshold}
    return report_html.AuditReport(
        result=run.result, model_card=card, scores=run.scores, labels=run.labels, groups=run.groups,
        fst_sources=run.fst_source, failed=run.failed, skipped=run.skipped, labels_path=run.labels_path,
        images_dir=run.images_dir, n_boot=run.n_boot, seed=run.seed, app_version=app_version,
    )


def to_html(run: AuditRun, model_card: Mapping[str, Any] | None = None, app_version: str = "") -> str:
    """The self-contained HTML report, rendered exactly as ``--audit`` renders its own."""
    return report_html.render_html(to_report(run, model_card, app_version))
