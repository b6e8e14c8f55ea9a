"""The audit's figures as text: the results table, the gap sentence and the CSV export (Qt-free).

The Audit tab shows these; the server can return them. Insufficient groups never show bare numbers.
"""

from __future__ import annotations

import csv
import io
import math

from mendicant_desktop.core import audit as core_audit

from .audit_run import AuditRun

#: Decimal places of the CSV export's figures.
CSV_DIGITS = 4

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
    """'All', 'Unknown', 'FST IV', 'FST V–VI' (DDI-style groups with an en dash)."""
    return {"overall": "All", "unknown": "Unknown"}.get(name, "FST " + name.replace("-", "–"))


def source_text(gm: core_audit.GroupMetrics) -> str:
    """Where a group's skin types came from: 'label', 'estimated', or 'mixed: 12 label + 3 est.' (short: a table cell)."""
    if gm.fst_source == "mixed":
        return f"mixed: {gm.n_label} label + {gm.n_estimated} est."
    return gm.fst_source


def table_rows(result: core_audit.AuditResult) -> list[tuple[list[str], bool]]:
    """Rows for the table: (cells, sufficient). Insufficient groups never show bare numbers."""
    out = []
    for name, gm in [("overall", result.overall), *result.groups.items()]:
        suff = gm.sufficient or name == "overall"
        if suff:
            cells = [group_label(name), str(gm.n), str(gm.n_pos), _ci(gm.auroc, gm.auroc_ci95),
                     _ci(gm.sensitivity, gm.sensitivity_ci95), _ci(gm.specificity, gm.specificity_ci95),
                     _num(gm.ece, 3), source_text(gm), "" if gm.sufficient else "too small for reliable figures"]
        else:
            why = (f"n = {gm.n} < {core_audit.MIN_GROUP_N}" if gm.n < core_audit.MIN_GROUP_N
                   else f"needs ≥ {core_audit.MIN_CLASS_N} positives and negatives")
            cells = [group_label(name), str(gm.n), str(gm.n_pos), "insufficient", "insufficient", "insufficient",
                     "insufficient", source_text(gm), f"insufficient data ({why})"]
        out.append((cells, bool(suff)))
    return out


def gap_text(result: core_audit.AuditResult) -> str:
    if math.isnan(result.auroc_gap):
        return ("AUROC gap: not computable — fewer than two skin-type groups have enough images "
                f"(n ≥ {core_audit.MIN_GROUP_N} with ≥ {core_audit.MIN_CLASS_N} positives and negatives).")
    lo, hi = result.auroc_gap_ci95
    ci = "" if math.isnan(lo) else f" (95% CI {lo:.2f}–{hi:.2f})"
    groups = ", ".join(group_label(g) for g in result.gap_groups)
    sens = "" if math.isnan(result.sensitivity_gap) else f"; sensitivity gap {result.sensitivity_gap:.2f}"
    return f"AUROC gap (max − min over {groups}): {result.auroc_gap:.2f}{ci}{sens}."


def neoplasm_text(run: AuditRun) -> str:
    """The second comparison in one sentence ('' when the labels have no lesion category)."""
    if not run.neoplasm_mask().any():
        return ""
    nr = run.neoplasm_result
    if nr is None:
        return "Malignant vs benign neoplasms: not computable (the neoplasms do not hold both classes)."
    o = nr.overall
    per = [f"{group_label(g)} {_ci(gm.auroc, gm.auroc_ci95)}" if gm.sufficient else
           f"{group_label(g)} insufficient (n={gm.n})" for g, gm in nr.groups.items() if g != "unknown"]
    return (f"Malignant vs benign neoplasms (non-neoplastic conditions left out; {o.n_pos} vs {o.n_neg}): AUROC "
            f"{_ci(o.auroc, o.auroc_ci95)}" + (f"; {', '.join(per)}" if per else "") + ".")


def to_csv(run: AuditRun) -> str:
    """The per-group figures as CSV (the Audit tab's CSV export); insufficient groups have empty cells.

    With a lesion category, a second block after a blank line holds malignant vs benign neoplasms."""
    buf = io.StringIO()
    w = csv.writer(buf)
    assert run.result is not None
    _csv_block(w, run.result)
    if run.neoplasm_result is not None:
        w.writerow([])
        w.writerow(["comparison", "malignant vs benign neoplasms (non-neoplastic left out)"])
        _csv_block(w, run.neoplasm_result)
    return buf.getvalue()


def _csv_block(w, res: core_audit.AuditResult) -> None:
    w.writerow(["group", "n", "n_pos", "sufficient", "fst_source", "auroc", "auroc_lo", "auroc_hi",
                "sensitivity", "sens_lo", "sens_hi", "specificity", "spec_lo", "spec_hi", "ppv", "npv", "ece",
                "brier", "n_fst_label", "n_fst_estimated"])
    for name, gm in [("overall", res.overall), *res.groups.items()]:
        withhold = not gm.sufficient and name != "overall"

        def f(v: float, withhold: bool = withhold) -> str:
            return "" if withhold or v is None or math.isnan(v) else f"{v:.{CSV_DIGITS}f}"

        w.writerow([name, gm.n, gm.n_pos, int(gm.sufficient), gm.fst_source, f(gm.auroc), f(gm.auroc_ci95[0]),
                    f(gm.auroc_ci95[1]), f(gm.sensitivity), f(gm.sensitivity_ci95[0]), f(gm.sensitivity_ci95[1]),
                    f(gm.specificity), f(gm.specificity_ci95[0]), f(gm.specificity_ci95[1]), f(gm.ppv), f(gm.npv),
                    f(gm.ece), f(gm.brier), gm.n_label, gm.n_estimated])
    gap = res.auroc_gap
    w.writerow([])
    w.writerow(["auroc_gap", "" if math.isnan(gap) else f"{gap:.{CSV_DIGITS}f}",
                "" if math.isnan(res.auroc_gap_ci95[0]) else f"{res.auroc_gap_ci95[0]:.{CSV_DIGITS}f}",
                "" if math.isnan(res.auroc_gap_ci95[1]) else f"{res.auroc_gap_ci95[1]:.{CSV_DIGITS}f}"])
