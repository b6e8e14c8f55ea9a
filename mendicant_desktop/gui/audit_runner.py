"""The Audit tab's work, without Qt: read a labelled CSV, score its images through the engine, audit.

Label columns (case-insensitive): ``image`` (or ``img_id``/``image_id``); ``malignant`` (0/1) or ``dx``
(ISIC/HAM/PAD codes, mapped by ``core.audit.dx_to_malignant``); ``fst`` (or ``fitspatrick``/
``fitzpatrick``; 1-6, I-VI or empty -- empty means the ITA estimate is used and marked ``estimated``);
optional ``age``, ``sex``/``gender``, ``site``/``region``/``localization`` fed to the model.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mendicant_desktop.core import audit as core_audit
from mendicant_desktop.core.errors import CancelledError, ImageLoadError, MetadataError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import load_image, preprocess
from mendicant_desktop.core.skintone import estimate_skin_tone

from .text import pct

_IMAGE_COLS = ("image", "img_id", "image_id", "file", "filename")
_FST_COLS = ("fst", "fitspatrick", "fitzpatrick")
_SEX_COLS = ("sex", "gender")
_SITE_COLS = ("site", "region", "localization", "anatom_site_general")


@dataclass
class LabelRow:
    image: str
    malignant: int
    fst: str  # 'I'..'VI' or 'unknown' (from the label)
    metadata: Metadata


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


def _pick(row: dict[str, str], names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in row and row[n] is not None:
            return row[n]
    return None


def read_labels(path: str | os.PathLike) -> tuple[list[LabelRow], list[tuple[str, str]]]:
    """Parse the labels CSV; returns (usable rows, skipped (image, reason))."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise ValueError(f"{Path(path).name} is empty")
        fields = [f.strip().lower() for f in reader.fieldnames]
        if not any(c in fields for c in _IMAGE_COLS):
            raise ValueError(f"{Path(path).name} has no image column (expected one of {', '.join(_IMAGE_COLS)})")
        if "malignant" not in fields and "dx" not in fields:
            raise ValueError(f"{Path(path).name} needs a 'malignant' (0/1) or a 'dx' column")
        rows: list[LabelRow] = []
        skipped: list[tuple[str, str]] = []
        for raw in reader:
            r = {(k or "").strip().lower(): (v or "").strip() for k, v in raw.items()}
            image = _pick(r, _IMAGE_COLS) or ""
            if not image:
                skipped.append(("(blank)", "no image name"))
                continue
            mal: int | None = None
            if r.get("malignant", "") != "":
                try:
                    v = float(r["malignant"])
                    mal = int(v) if v in (0.0, 1.0) else None
                except ValueError:
                    mal = None
            if mal is None and r.get("dx"):
                mal = core_audit.dx_to_malignant(r["dx"])
            if mal is None:
                skipped.append((image, "no usable malignant/dx label"))
                continue
            try:
                fst = core_audit.parse_fst(_pick(r, _FST_COLS) or "")
            except ValueError as exc:
                skipped.append((image, str(exc)))
                continue
            try:
                meta = Metadata(age=r.get("age") or None, sex=_pick(r, _SEX_COLS) or "unknown",
                                site=_pick(r, _SITE_COLS) or "unknown")
            except MetadataError:
                meta = Metadata()
            rows.append(LabelRow(image=image, malignant=mal, fst=fst, metadata=meta))
    return rows, skipped


def _resolve(images_dir: Path, name: str) -> Path:
    p = images_dir / name
    if p.suffix == "" and not p.exists():
        for ext in (".jpg", ".png", ".jpeg"):
            if (images_dir / (name + ext)).exists():
                return images_dir / (name + ext)
    return p


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
    rows, skipped = read_labels(labels_csv)
    if not rows:
        raise ValueError("no usable rows in the labels file" + (f" ({skipped[0][1]})" if skipped else ""))
    folder = Path(images_dir)
    run = AuditRun(skipped=skipped, threshold=float(threshold), model=engine.card.name)
    total = len(rows)
    pending: list[tuple[LabelRow, np.ndarray, str, str]] = []

    def flush() -> None:
        if not pending:
            return
        x = np.stack([p[1] for p in pending])
        preds = engine.predict_preprocessed(x, [p[0].metadata for p in pending], cam=False, threshold=threshold)
        for (row, _x, grp, src), pred in zip(pending, preds):
            run.images.append(row.image)
            run.scores.append(min(1.0, max(0.0, float(pred.malignancy))))
            run.labels.append(row.malignant)
            run.groups.append(grp)
            run.fst_source.append(src)
        pending.clear()

    for i, row in enumerate(rows):
        if is_cancelled is not None and is_cancelled():
            raise CancelledError("audit cancelled")
        try:
            rgb = load_image(_resolve(folder, row.image))
        except ImageLoadError as exc:
            run.failed.append((row.image, exc.reason))
        else:
            if row.fst != "unknown":
                grp, src = row.fst, "label"
            else:
                est = estimate_skin_tone(rgb)
                grp, src = est.fst, "estimated"
            pending.append((row, preprocess(rgb, engine.input_size), grp, src))
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


def to_html(run: AuditRun, roc_png_b64: str = "", cal_png_b64: str = "", model_line: str = "") -> str:
    res = run.result
    assert res is not None
    e = html.escape
    rows = []
    for cells, suff in table_rows(res):
        style = "" if suff else " style='color:#6b7480'"
        rows.append("<tr" + style + ">" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    failed = "".join(f"<li>{e(a)}: {e(b)}</li>" for a, b in run.failed[:500])
    skipped = "".join(f"<li>{e(a)}: {e(b)}</li>" for a, b in run.skipped[:500])
    imgs = ""
    if roc_png_b64:
        imgs += f"<img alt='ROC curves' src='data:image/png;base64,{roc_png_b64}'>"
    if cal_png_b64:
        imgs += f"<img alt='Calibration plot' src='data:image/png;base64,{cal_png_b64}'>"
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>MENDICANT fairness audit</title>
<style>body{{font-family:sans-serif;color:#1d2733;max-width:1100px;margin:24px auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #d5dbe3;padding:4px 8px;text-align:left}}
th{{background:#eef2f6}}.note{{color:#5b6673}}</style></head><body>
<h1>Fairness audit by Fitzpatrick skin type</h1>
<p>{e(model_line or run.model)} · operating threshold {pct(run.threshold)} ({run.threshold:.4g}) · {len(run.scores)} images scored,
{len(run.failed)} failed, {len(run.skipped)} label rows unusable.</p>
<table><tr>{''.join(f'<th>{e(c)}</th>' for c in TABLE_COLUMNS)}</tr>{''.join(rows)}</table>
<p><b>{e(gap_text(res))}</b></p>
<p class="note">Groups with fewer than {core_audit.MIN_GROUP_N} images, or fewer than {core_audit.MIN_CLASS_N}
positives or negatives, are marked insufficient: their figures are withheld and they are left out of the gap.
FST source "estimated" means the skin type came from the image (ITA), not from a clinician.
Intervals: stratified bootstrap, 95% percentile.</p>
{imgs}
<h2>Images that could not be scored ({len(run.failed)})</h2><ul>{failed or '<li>none</li>'}</ul>
<h2>Label rows not used ({len(run.skipped)})</h2><ul>{skipped or '<li>none</li>'}</ul>
</body></html>"""
