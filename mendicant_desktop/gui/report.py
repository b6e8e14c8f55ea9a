"""Case report (PDF via QTextDocument + QPdfWriter, no extra dependency) and the session CSV.

The PDF holds the image, the Grad-CAM overlay, the probabilities, the metadata, the skin type
(estimated or set by the clinician), the model's name, version and sha256, the date and the disclaimer.
Everything is built from QImage (never QPixmap), so it can run on a worker thread.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QMarginsF, QSizeF, QUrl
from PySide6.QtGui import QPageLayout, QPageSize, QPdfWriter, QTextDocument

from mendicant_desktop import __version__
from mendicant_desktop.app.images import downscale
from mendicant_desktop.app.output import RowWriter
from mendicant_desktop.app.rows import (
    METADATA_COLUMNS,
    STATUS_ERROR,
    THRESHOLD_COLUMNS,
    columns_for,
    error_row,
    ok_row,
    threshold_cells,
)
from mendicant_desktop.core.results import CLASS_FULL_NAMES, MALIGNANT_CLASSES
from mendicant_desktop.core.saliency import overlay

from . import text
from .cases import Case
from .qtutil import rgb_to_qimage
from .text import pct

#: The session CSV: the ``--batch --metadata`` columns (same cells for the same image and metadata), then the
#: GUI's own columns.
GUI_COLUMNS: tuple[str, ...] = (*THRESHOLD_COLUMNS, "fst_override", "fst_used", "scored_at")
EXPORT_COLUMNS: tuple[str, ...] = columns_for(metadata=True) + GUI_COLUMNS
assert EXPORT_COLUMNS[-len(GUI_COLUMNS) - len(METADATA_COLUMNS):-len(GUI_COLUMNS)] == METADATA_COLUMNS
#: Longest side of the images in the PDF report.
REPORT_IMAGE_SIDE = 900


def case_row(case: Case, model_name: str = "", model_sha256: str = "", model_threshold: float | None = None,
             threshold_source: str = "") -> dict[str, Any]:
    """One session row: the app layer's row of the case (as ``--batch`` writes it) plus the GUI's columns.

    ``model_name``/``model_sha256`` fill the model cells of cases that were not scored.
    """
    pred = case.prediction
    if case.status == "done" and pred is not None:
        row = ok_row(case.source, pred, sha256=case.sha256, width=case.width, height=case.height, skin=case.skin,
                     warnings=case.warnings, metadata=case.metadata, columns=EXPORT_COLUMNS)
        row.update(fst_used=case.fst, **threshold_cells(pred.threshold, model_threshold, threshold_source))
    else:
        row = error_row(case.source, case.error, model_name=model_name, model_sha256=model_sha256,
                        sha256=case.sha256 or None, width=case.width or None, height=case.height or None,
                        metadata=case.metadata, columns=EXPORT_COLUMNS,
                        status=STATUS_ERROR if case.status == "error" else case.status)
    row.update(fst_override=case.fst_override or "",
               scored_at=case.scored.isoformat(timespec="seconds") if case.scored else "")
    return row


def write_csv(cases: list[Case], path: str | os.PathLike, model_name: str = "", model_sha256: str = "",
              model_threshold: float | None = None, threshold_source: str = "") -> Path:
    """The session CSV (UTF-8, one row per case, the app layer's formatter). ``threshold_default`` and
    ``threshold_source`` ("model", "site", "user") mark a threshold that is not the model card's."""
    p = Path(path)
    with RowWriter(p, EXPORT_COLUMNS, "csv") as w:
        for c in cases:
            w.write(case_row(c, model_name, model_sha256, model_threshold, threshold_source))
    return p


@dataclass(frozen=True)
class ReportData:
    """A snapshot of what the report needs, taken on the GUI thread (cases keep changing)."""

    case: Case
    image: np.ndarray
    overlay_img: np.ndarray | None
    model_name: str
    model_version: str
    model_sha256: str
    colormap: str
    skin_enabled: bool
    model_threshold: float | None = None
    threshold_source: str = ""
    clinician: str = ""
    clinic: str = ""


def snapshot(case: Case, image: np.ndarray, model_name: str, model_version: str, model_sha256: str,
             colormap: str = "jet", opacity: float = 0.45, skin_enabled: bool = True) -> ReportData:
    img = downscale(image, REPORT_IMAGE_SIDE)
    ov = None
    if case.prediction is not None and case.prediction.cam is not None:
        ov = overlay(img, case.prediction.cam, alpha=max(0.3, min(0.7, opacity)), colormap=colormap)
    return ReportData(case=case, image=img, overlay_img=ov, model_name=model_name, model_version=model_version,
                      model_sha256=model_sha256, colormap=colormap, skin_enabled=skin_enabled)


def _esc(s: object) -> str:
    return html.escape(str(s))


def report_html(d: ReportData, now: datetime | None = None, key: str = "", wrap: bool = True) -> str:
    """One case's report. ``key`` names its images' resources (several cases in one document); ``wrap`` False
    gives the body's content only (:func:`reports_html` joins several)."""
    c, pred = d.case, d.case.prediction
    now = now or datetime.now()
    e = _esc
    rows = []
    if pred is not None:
        for name, p in sorted(zip(pred.class_names, pred.probabilities), key=lambda t: -t[1]):
            mark = " *" if name in MALIGNANT_CLASSES else ""
            w = max(1, int(round(200 * p)))
            rows.append(
                f"<tr><td>{e(CLASS_FULL_NAMES.get(name, name))}{mark}</td><td>{e(name)}</td>"
                f"<td align='right'>{e(text.prob_text(p))}</td>"
                f"<td><table cellspacing='0' cellpadding='0'><tr><td bgcolor='#1f5f8b' width='{w}' height='8'></td>"
                f"</tr></table></td></tr>"
            )
    m = c.metadata
    head, detail = text.skin_text(c.skin, c.fst_override, d.skin_enabled)
    risk_col = "#b3261e" if pred is not None and pred.risk == "high" else "#2e7d32"
    mono = "font-family: monospace; font-size: 7.5pt"
    h3 = "style='margin-top:10px; margin-bottom:4px'"
    parts = [
        BODY_OPEN,
        "<h2 style='margin:0'>MENDICANT — case report</h2>",
        f"<p style='color:#5b6673; margin-top:2px; margin-bottom:6px'>Generated {now:%Y-%m-%d %H:%M} · "
        f"MENDICANT Desktop {e(__version__)}</p>",
        "<table width='100%' cellpadding='6' style='background:#fff4e0; border:1px solid #e0b060'><tr><td>"
        f"<b>{e(text.DISCLAIMER)}</b></td></tr></table>",
        "<table cellpadding='2' cellspacing='0' style='margin-top:8px'>",
        *(f"<tr><td style='color:#5b6673'>{k}</td><td>{e(v)}</td></tr>" for k, v in (
            ("Patient", c.patient_code), ("Lesion", (c.lesion_label or "") + (f" (#{c.lesion_id})" if c.lesion_id
                                                                               else "")),
            ("Visit date", c.visit_date or (c.scored.date().isoformat() if c.scored else "")),
            ("Clinician", d.clinician), ("Clinic", d.clinic)) if v),
        # the file's name only: a report leaves the computer, the folders it came from do not
        f"<tr><td style='color:#5b6673'>Image</td><td>{e(c.name)} ({c.width} × {c.height} px)</td></tr>",
        f"<tr><td style='color:#5b6673'>Image sha256</td><td style='{mono}'>{e(c.sha256)}</td></tr>",
        f"<tr><td style='color:#5b6673; padding-right:10px'>Model</td><td><b>{e(d.model_name)}</b> version "
        f"{e(d.model_version)} (file verified against its card's sha256 when loaded)</td></tr>",
        f"<tr><td style='color:#5b6673'>Model sha256</td><td style='{mono}'>{e(d.model_sha256)}</td></tr>",
        "</table>",
        f"<table cellspacing='6' style='margin-top:4px'><tr><td align='center'><img src='mendicant://image{key}' "
        "width='250'><br>Original</td>",
    ]
    if d.overlay_img is not None:
        target = pred.cam_target or pred.top_class if pred is not None else ""
        parts.append(f"<td align='center'><img src='mendicant://overlay{key}' width='250'><br>Grad-CAM ({e(d.colormap)}) "
                     f"for {e(text.class_label(target)) if target != 'malignancy' else 'the malignancy score'}</td>")
    parts.append("</tr></table>")
    if pred is not None:
        parts += [
            f"<h3 {h3}>Assessment</h3>",
            f"<p style='font-size: 11pt; margin:0'><b style='color:{risk_col}'>Malignancy score "
            f"{pct(pred.malignancy)} — {pred.risk.upper()} band</b> (operating threshold "
            f"{e(text.threshold_text(pred.threshold, d.model_threshold, d.threshold_source))})</p>",
            f"<p style='margin-top:4px'>{e(text.summary(pred, c.warnings, d.model_threshold, d.threshold_source))}</p>",
            "<table cellpadding='2' cellspacing='0' border='0'>"
            "<tr><th align='left'>Class</th><th align='left'>Code</th><th align='right'>Probability</th><th></th></tr>",
            *rows,
            "</table><p style='color:#5b6673; font-size: 8pt; margin-top:2px'>* counted in the malignancy score "
            "(melanoma + basal cell carcinoma + actinic keratosis / intraepithelial carcinoma).</p>",
        ]
    if c.warnings:
        parts.append(f"<h3 {h3}>Warnings</h3><ul style='margin-top:0'>" + "".join(f"<li>{e(w)}</li>" for w in c.warnings)
                     + "</ul>")
    parts += [
        f"<h3 {h3}>Patient details and skin type</h3>",
        "<table cellpadding='2'>",
        f"<tr><td style='color:#5b6673; padding-right:10px'>Age</td><td>{'not given' if m.age is None else f'{m.age:g} years'}</td>"
        f"<td style='color:#5b6673; padding-left:24px; padding-right:10px'>Sex</td><td>{e(text.SEX_LABELS.get(m.sex, m.sex))}</td>"
        f"<td style='color:#5b6673; padding-left:24px; padding-right:10px'>Body site</td><td>{e(text.SITE_LABELS.get(m.site, m.site))}</td></tr>",
        "</table>",
        f"<p style='margin-top:4px'><b>Skin type:</b> {e(head)}{('<br>' + e(detail)) if detail else ''}</p>",
        *([f"<h3 {h3}>Notes</h3>", "<p style='margin-top:0'>" + e(c.notes).replace(chr(10), "<br>") + "</p>"]
          if c.notes.strip() else []),
        f"<p style='color:#5b6673; font-size: 8pt; margin-top:10px'>{e(text.DISCLAIMER_SHORT)}</p>",
        "</body></html>",
    ]
    if not wrap:
        parts = parts[1:-1]
    return "\n".join(parts)


BODY_OPEN = "<html><body style='font-family: sans-serif; font-size: 9.5pt; color:#1d2733'>"


def reports_html(ds: list[ReportData], now: datetime | None = None) -> str:
    """Several cases in one document, each from a new page."""
    brk = "<p style='page-break-before: always; margin:0'></p>"
    return BODY_OPEN + brk.join(report_html(d, now, key=str(i), wrap=False) for i, d in enumerate(ds)) + \
        "</body></html>"


def build_document(ds: ReportData | list[ReportData]) -> QTextDocument:
    """The report(s) as a QTextDocument with their images (thread-safe: QImage + QTextDocument only)."""
    many = isinstance(ds, list)
    items = ds if many else [ds]
    doc = QTextDocument()
    for i, d in enumerate(items):
        key = str(i) if many else ""
        doc.addResource(QTextDocument.ResourceType.ImageResource, QUrl(f"mendicant://image{key}"),
                        rgb_to_qimage(d.image))
        if d.overlay_img is not None:
            doc.addResource(QTextDocument.ResourceType.ImageResource, QUrl(f"mendicant://overlay{key}"),
                            rgb_to_qimage(d.overlay_img))
    doc.setHtml(reports_html(items) if many else report_html(items[0]))
    return doc


def write_pdf(d: ReportData | list[ReportData], path: str | os.PathLike) -> Path:
    """Render the report (or several cases, one after another) to a PDF (A4). Thread-safe: QImage +
    QTextDocument + QPdfWriter only."""
    p = Path(path)
    writer = QPdfWriter(str(p))
    writer.setPageSize(QPageSize(QPageSize.PageSizeId.A4))
    writer.setPageMargins(QMarginsF(15, 15, 15, 15), QPageLayout.Unit.Millimeter)
    writer.setResolution(96)  # the document's px and pt then match a screen's; images keep their pixels
    writer.setTitle(f"MENDICANT case report — {d.case.name}" if not isinstance(d, list)
                    else f"MENDICANT case reports — {len(d)} cases")
    writer.setCreator(f"MENDICANT Desktop {__version__}")
    doc = build_document(d)
    layout = writer.pageLayout()
    rect = layout.paintRectPixels(writer.resolution())
    doc.setPageSize(QSizeF(rect.width(), rect.height()))
    doc.print_(writer)
    del writer  # flushes and closes the file
    return p
