"""The "Model" tab: the model card of the loaded model, rendered from whatever fields it has."""

from __future__ import annotations

import html
import math
from typing import Any

from PySide6.QtWidgets import QTextBrowser, QVBoxLayout, QWidget

from mendicant_desktop.core.results import CLASS_FULL_NAMES

from .services import Services

_SKIP_CARD_KEYS = {"format_version", "name", "version", "file", "sha256", "size_bytes", "head", "class_names",
                   "input", "outputs", "preprocessing", "threshold", "provenance", "metrics", "malignant_classes",
                   "malignancy_score"}


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


def render_mapping(d: dict[str, Any], depth: int = 0) -> str:
    """Nested dict -> HTML: scalars as a key/value table; dicts of flat dicts (e.g. per-FST) as one table."""
    if not d:
        return "<p><i>none</i></p>"
    scalars = {k: v for k, v in d.items() if _is_scalar(v)}
    nested = {k: v for k, v in d.items() if isinstance(v, dict)}
    parts = []
    if scalars:
        parts.append("<table cellpadding='3' cellspacing='0'>" + "".join(
            f"<tr><td style='color:#5b6673; padding-right:14px'>{_e(k)}</td><td>{_fmt(v)}</td></tr>"
            for k, v in scalars.items()) + "</table>")
    for k, v in nested.items():
        h = "h4" if depth else "h3"
        rows = v.values()
        if v and all(isinstance(r, dict) and all(_is_scalar(x) for x in r.values()) for r in rows):
            cols: list[str] = []
            for r in v.values():
                for c in r:
                    if c not in cols:
                        cols.append(c)
            head = "".join(f"<th align='left'>{_e(c)}</th>" for c in cols)
            body = "".join(
                f"<tr><td><b>{_e(name)}</b></td>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>"
                for name, r in v.items())
            parts.append(f"<{h}>{_e(k)}</{h}><table border='1' cellpadding='4' cellspacing='0' "
                         f"style='border-color:#d5dbe3'><tr><th></th>{head}</tr>{body}</table>")
        else:
            parts.append(f"<{h}>{_e(k)}</{h}>" + render_mapping(v, depth + 1))
    return "".join(parts)


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
    thr = (f"{c.threshold:.3f} (model default)" if thr_user is None
           else f"{thr_user:.3f} (set in Settings; model default {c.threshold:.3f})")
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
        services.settings.changed.connect(lambda k: self.refresh() if k == "inference/threshold" else None)
        self.refresh()

    def refresh(self, *_) -> None:
        self.browser.setHtml(card_html(self.services))
