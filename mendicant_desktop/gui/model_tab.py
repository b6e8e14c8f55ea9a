"""The "Model" tab: the model card of the loaded model, rendered from whatever fields it has."""

from __future__ import annotations

import html
import math
from typing import Any

from PySide6.QtWidgets import QTextBrowser, QVBoxLayout, QWidget

from mendicant_desktop.core.results import CLASS_FULL_NAMES

from .services import Services
from .settings import THRESHOLD_KEY
from .text import pct

_SKIP_CARD_KEYS = {"format_version", "name", "version", "file", "sha256", "size_bytes", "head", "class_names",
                   "input", "outputs", "preprocessing", "threshold", "provenance", "metrics", "malignant_classes",
                   "malignancy_score", "intended_use", "limitations"}


def _e(v: object) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(t, (int, float)) or t is None for t in v):
        lo, hi = v
        if lo is None or hi is None:
            return "–"
        return f"{_fmt(float(lo))} – {_fmt(float(hi))}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(t) for t in v)
    if v is None:
        return "–"
    return _e(v)


def _is_scalar(v: Any) -> bool:
    return not isinstance(v, dict) and not (isinstance(v, (list, tuple)) and len(v) > 2
                                            and any(isinstance(t, (dict, list)) for t in v))


def _metric(v: Any) -> str:
    if isinstance(v, float) and not math.isnan(v) and 0.0 <= v <= 1.0:
        return f"{v:.3f}"
    return _fmt(v)


def _group_table(groups: dict[str, dict[str, Any]]) -> str:
    """Rows = groups (e.g. skin types). ``x`` and ``x_ci95`` share one cell, "x (lo–hi)"; a row without any
    figure (an insufficient group) shows its note across the metric columns instead of a row of dashes."""
    cols: list[str] = []
    for r in groups.values():
        for c in r:
            if c not in cols and not (c.endswith("_ci95") and c[:-5] in r):
                cols.append(c)
    info = [c for c in cols if c in ("n", "n_pos", "sufficient", "fst_source")]
    notes = [c for c in cols if c == "note"]
    metrics = [c for c in cols if c not in info and c not in notes]
    head = "".join(f"<th align='left'>{_e(c.replace('_', ' '))}</th>" for c in info)
    head += "".join(f"<th align='left'>{_e(c.replace('_', ' '))}{' (95% CI)' if any(c + '_ci95' in r for r in groups.values()) else ''}</th>"
                    for c in metrics)
    body = []
    for name, r in groups.items():
        cells = "".join(f"<td>{_fmt(r.get(c))}</td>" for c in info)
        has_figures = any(r.get(c) is not None for c in metrics)
        if not has_figures and r.get("note"):
            cells += f"<td colspan='{max(1, len(metrics))}' style='color:#6b7480'>{_e(r['note'])}</td>"
        else:
            for c in metrics:
                val = _metric(r.get(c))
                ci = r.get(c + "_ci95")
                if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci and r.get(c) is not None:
                    val += f" ({float(ci[0]):.3f}–{float(ci[1]):.3f})"
                cells += f"<td>{val}</td>"
        body.append(f"<tr><td><b>{_e(name)}</b></td>{cells}</tr>")
    return ("<table border='1' cellpadding='4' cellspacing='0' style='border-color:#d5dbe3'>"
            f"<tr><th></th>{head}</tr>{''.join(body)}</table>")


def render_mapping(d: dict[str, Any], depth: int = 0) -> str:
    """Nested dict -> HTML: scalars as a key/value table; dicts of flat dicts (e.g. per-FST) as one table."""
    if not d:
        return "<p><i>none</i></p>"
    scalars = {k: v for k, v in d.items() if _is_scalar(v)}
    nested = {k: v for k, v in d.items() if isinstance(v, dict)}
    parts = []
    if scalars:
        rows = []
        for k, v in scalars.items():
            if k.endswith("_ci95") and k[:-5] in scalars:
                continue  # shown with its estimate
            val = _metric(v)
            ci = scalars.get(k + "_ci95")
            if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci and v is not None:
                val += f" (95% CI {float(ci[0]):.3f}–{float(ci[1]):.3f})"
            rows.append(f"<tr><td style='color:#5b6673; padding-right:14px'>{_e(k)}</td><td>{val}</td></tr>")
        parts.append("<table cellpadding='3' cellspacing='0'>" + "".join(rows) + "</table>")
    for k, v in nested.items():
        h = "h4" if depth else "h3"
        rows = v.values()
        if v and all(isinstance(r, dict) and all(_is_scalar(x) for x in r.values()) for r in rows):
            parts.append(f"<{h}>{_e(k)}</{h}>" + _group_table(v))
        else:
            parts.append(f"<{h}>{_e(k)}</{h}>" + render_mapping(v, depth + 1))
    return "".join(parts)


def _as_items(v: Any) -> list[str]:
    if v is None:
        return []
    if isinstance(v, (list, tuple)):
        return [str(t) for t in v]
    if isinstance(v, dict):
        return [f"{k}: {t}" for k, t in v.items()]
    return [str(v)]


def _use_and_limits(raw: dict[str, Any]) -> str:
    """The card's intended use and limitations, shown before any number (clinicians read these first)."""
    out = []
    use = _as_items(raw.get("intended_use"))
    if use:
        out.append("<h3>Intended use</h3>" + "".join(f"<p>{_e(u)}</p>" for u in use))
    lim = _as_items(raw.get("limitations"))
    if lim:
        out.append("<h3>Limitations</h3><table width='100%' cellpadding='6' style='background:#fff4e0; "
                   "border:1px solid #e8c88a'><tr><td><ul style='margin:0'>"
                   + "".join(f"<li>{_e(x)}</li>" for x in lim) + "</ul></td></tr></table>")
    return "".join(out)


def card_html(services: Services) -> str:
    eng, bundle = services.engine, services.bundle
    if eng is None or bundle is None:
        if services.error:
            return (f"<h2>No model loaded</h2><p style='color:#b00020'><b>{_e(services.error)}</b></p>"
                    "<p>The application cannot assess images without a verified model. Reinstall it, or start "
                    "it with <code>--model CARD.json</code> (or the <code>MENDICANT_MODEL</code> variable).</p>")
        return "<h2>Loading and verifying the model…</h2>"
    c = eng.card
    size_mb = c.size_bytes / 1e6
    thr_user = services.settings.threshold
    thr = (f"{c.threshold:.3f} = {pct(c.threshold)} (model default)" if thr_user is None
           else f"{thr_user:.3f} = {pct(thr_user)} (set in Settings; model default {c.threshold:.3f})")
    classes = "".join(f"<li>{_e(CLASS_FULL_NAMES.get(n, n))} ({_e(n)})</li>" for n in c.class_names)
    extra = {k: v for k, v in c.raw.items() if k not in _SKIP_CARD_KEYS}
    load = f" in {services.load_seconds:.2f} s" if services.load_seconds else ""
    return f"""
<h2 style='margin-bottom:2px'>{_e(c.name)} <span style='color:#5b6673; font-weight:normal'>version {_e(c.version)}</span></h2>
<p style='color:#2e7d32'><b>✔ Verified:</b> the model file's sha256 matches its card (checked at start-up{load}).</p>
<table cellpadding='3' cellspacing='0'>
<tr><td style='color:#5b6673; padding-right:14px'>sha256</td><td style='font-family:monospace'>{_e(c.sha256)}</td></tr>
<tr><td style='color:#5b6673'>File</td><td>{_e(bundle.model_path)}</td></tr>
<tr><td style='color:#5b6673'>Size</td><td>{size_mb:.2f} MB ({c.size_bytes:,} bytes)</td></tr>
<tr><td style='color:#5b6673'>Input</td><td>{c.input_size[0]}×{c.input_size[1]} RGB image + age, sex, body site</td></tr>
<tr><td style='color:#5b6673'>Operating threshold</td><td>{thr}</td></tr>
<tr><td style='color:#5b6673'>Malignancy score</td><td>{_e(c.raw.get('malignancy_score', 'p(mel) + p(bcc) + p(akiec)'))}</td></tr>
<tr><td style='color:#5b6673'>Inference</td><td>ONNX Runtime, CPU, {eng.threads} thread(s)</td></tr>
</table>
{_use_and_limits(c.raw)}
<h3>Classes</h3><ul>{classes}</ul>
<h3>Metrics</h3>{render_mapping(c.metrics, 1)}
<p style='color:#5b6673'>Figures come from the model card, computed by the developers on held-out data. An interval
is a 95% confidence interval; a group without enough images has no reliable figure.</p>
<h3>Provenance</h3>{render_mapping(c.provenance, 1)}
{('<h3>Other card fields</h3>' + render_mapping(extra, 1)) if extra else ''}
"""


class ModelTab(QWidget):
    def __init__(self, services: Services, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.services = services
        lay = QVBoxLayout(self)
        lay.setContentsMargins(12, 10, 12, 10)
        self.browser = QTextBrowser()
        self.browser.setOpenExternalLinks(False)
        self.browser.setObjectName("ModelCard")
        lay.addWidget(self.browser)
        services.engineChanged.connect(self.refresh)
        services.modelFailed.connect(self.refresh)
        services.modelLoading.connect(self.refresh)
        services.settings.changed.connect(lambda k: self.refresh() if k == THRESHOLD_KEY else None)
        self.refresh()

    def refresh(self, *_) -> None:
        self.browser.setHtml(card_html(self.services))
