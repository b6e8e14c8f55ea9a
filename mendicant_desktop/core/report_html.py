"""The fairness-audit report: one self-contained HTML file (inline SVG plots and PNG data URIs).

Standard library and numpy only, so ``--audit`` and the GUI's audit tab render the same file. The page
loads nothing: no scripts, no fonts, no remote images; a Content-Security-Policy meta tag forbids any
network access even if the file is opened in a browser. Groups that :func:`core.audit.is_sufficient`
rejects never get a bare number: their cells read "insufficient (n=...)".

Entry points: :class:`AuditReport` (everything the page shows), :func:`render_html` and
:func:`report_dict` (the METRICS.json layout: the audit's ``to_dict()`` plus model card, failures and the
explanation summary).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import audit as core_audit
from .bundle import strict_json
from .explain import GroupSaliency
from .saliency import colormap_lut, overlay, upsample_cam

__all__ = ["AuditReport", "ExampleTile", "GROUP_COLOURS", "png_bytes", "png_data_uri", "render_html", "report_dict"]

# Okabe-Ito colour-blind-safe palette; 'overall' black, 'unknown' grey.
GROUP_COLOURS: dict[str, str] = {
    "overall": "#000000", "I": "#E69F00", "II": "#56B4E9", "III": "#009E73", "IV": "#D55E00",
    "V": "#CC79A7", "VI": "#0072B2", "unknown": "#999999",
    "I-II": "#E69F00", "III-IV": "#009E73", "V-VI": "#0072B2",
}
_GROUP_TITLES = {"overall": "All images", "unknown": "unknown", "I-II": "FST I–II", "III-IV": "FST III–IV",
                 "V-VI": "FST V–VI"}
_METRIC_LABELS = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("ppv", "PPV"), ("npv", "NPV"))


@dataclass(frozen=True)
class ExampleTile:
    """One example of the heatmap strip: the model input (uint8 RGB, any size) and its Grad-CAM map."""

    image: np.ndarray = field(repr=False)
    cam: np.ndarray = field(repr=False)
    caption: str = ""


@dataclass
class AuditReport:
    """Everything the report shows. Only ``result`` and ``model_card`` are needed; the rest is optional.

    ``scores``/``labels``/``groups`` (one per audited image) draw the ROC and calibration curves;
    ``fst_sources`` ('label'/'estimated' per image) feed the skin-type provenance note; ``failed`` and
    ``skipped`` list the images that could not be scored and the label rows that could not be used;
    ``per_image`` rows (JSON-ready dicts) go into METRICS.json only.
    """

    result: core_audit.AuditResult | None
    model_card: Mapping[str, Any]
    scores: Sequence[float] = ()
    labels: Sequence[int] = ()
    groups: Sequence[str] = ()
    fst_sources: Sequence[str] = ()
    failed: Sequence[tuple[str, str]] = ()
    skipped: Sequence[tuple[str, str]] = ()
    saliency: Mapping[str, GroupSaliency] | None = None
    saliency_note: str = ""
    examples: Mapping[str, Sequence[ExampleTile]] = field(default_factory=dict)
    labels_path: str = ""
    images_dir: str = ""
    n_boot: int = 1000
    seed: int = 0
    app_version: str = ""
    generated: str = ""
    notes: Sequence[str] = ()
    per_image: Sequence[Mapping[str, Any]] = ()
    title: str = "Fairness audit by skin type"
    #: Malignant vs benign neoplasms (non-neoplastic conditions left out) and which images it covers.
    neoplasm_result: core_audit.AuditResult | None = None
    neoplasm_mask: Sequence[bool] = ()
    grouping: str = "type"


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _esc(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _finite(v: Any) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _num(v: Any, nd: int = 3) -> str:
    return f"{float(v):.{nd}f}" if _finite(v) else "n/a"


def _ci(ci: Sequence[Any] | None, nd: int = 3) -> str:
    if not ci or not all(_finite(c) for c in ci):
        return ""
    return f'<span class="ci">[{float(ci[0]):.{nd}f}–{float(ci[1]):.{nd}f}]</span>'


def _group_title(g: str) -> str:
    return _GROUP_TITLES.get(g, f"FST {g}")


def png_bytes(rgb: np.ndarray) -> bytes:
    """Encode an RGB uint8 (H, W, 3) array as PNG with zlib only."""
    a = np.ascontiguousarray(rgb, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected (H, W, 3) uint8, got {a.shape}")
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def png_data_uri(rgb: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def _shrink(rgb: np.ndarray, side: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    step = max(1, int(math.ceil(max(h, w) / side)))
    return rgb[::step, ::step]


def _heat_rgb(cam: np.ndarray, size: int = 96, colormap: str = "jet") -> np.ndarray:
    c = np.asarray(cam, dtype=np.float32)
    peak = float(c.max()) if c.size else 0.0
    c = c / peak if peak > 0 else np.zeros_like(c)
    up = upsample_cam(np.clip(c, 0, 1), (size, size))
    return colormap_lut(colormap)[np.clip(np.round(up * 255), 0, 255).astype(np.uint8)]


# --------------------------------------------------------------------------------------------------
# SVG plots
# --------------------------------------------------------------------------------------------------

_PLOT = 300  # plot area side in px
_PAD_L, _PAD_B, _PAD_T, _PAD_R = 46, 40, 12, 12


def _axes(xlabel: str, ylabel: str) -> list[str]:
    out = []
    x0, y0 = _PAD_L, _PAD_T
    out.append(f'<rect x="{x0}" y="{y0}" width="{_PLOT}" height="{_PLOT}" fill="#fff" stroke="#444"/>')
    for i in range(6):
        t = i / 5
        px = x0 + t * _PLOT
        py = y0 + _PLOT - t * _PLOT
        out.append(f'<line x1="{px:.1f}" y1="{y0}" x2="{px:.1f}" y2="{y0 + _PLOT}" stroke="#eee"/>')
        out.append(f'<line x1="{x0}" y1="{py:.1f}" x2="{x0 + _PLOT}" y2="{py:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{px:.1f}" y="{y0 + _PLOT + 14}" class="tick" text-anchor="middle">{t:.1f}</text>')
        out.append(f'<text x="{x0 - 6}" y="{py + 4:.1f}" class="tick" text-anchor="end">{t:.1f}</text>')
    out.append(f'<text x="{x0 + _PLOT / 2}" y="{y0 + _PLOT + 32}" class="axl" text-anchor="middle">{_esc(xlabel)}</text>')
    out.append(f'<text transform="translate(12,{y0 + _PLOT / 2}) rotate(-90)" class="axl" '
               f'text-anchor="middle">{_esc(ylabel)}</text>')
    out.append(f'<line x1="{x0}" y1="{y0 + _PLOT}" x2="{x0 + _PLOT}" y2="{y0}" stroke="#888" stroke-dasharray="4 4"/>')
    return out


def _xy(x: float, y: float) -> tuple[float, float]:
    return _PAD_L + x * _PLOT, _PAD_T + _PLOT - y * _PLOT


def _svg(parts: list[str], legend: list[tuple[str, str, str]], aria: str) -> str:
    width = _PAD_L + _PLOT + _PAD_R + 240
    height = _PAD_T + _PLOT + _PAD_B + 10
    lx = _PAD_L + _PLOT + 20
    for i, (colour, label, dash) in enumerate(legend):
        ly = _PAD_T + 14 + 18 * i
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<line x1="{lx}" y1="{ly - 4}" x2="{lx + 22}" y2="{ly - 4}" stroke="{colour}" stroke-width="2.5"{d}/>')
        parts.append(f'<text x="{lx + 28}" y="{ly}" class="leg">{_esc(label)}</text>')
    return (f'<svg class="plot" role="img" aria-label="{_esc(aria)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">' + "".join(parts) + "</svg>")


def _curve_groups(report: AuditReport, result: core_audit.AuditResult | None = None,
                  mask: Sequence[bool] | None = None) -> list[tuple[str, np.ndarray, np.ndarray, bool]]:
    """(group, scores, labels, plotted?) for overall and each group present, in report order.

    ``result``/``mask``: another comparison over a subset of the images (default: the headline, all images).
    """
    res = report.result if result is None else result
    s = np.asarray(report.scores, dtype=np.float64)
    y = np.asarray(report.labels, dtype=np.int8)
    g = np.asarray([core_audit.group_of(v, report.grouping) for v in report.groups], dtype=object)
    if not s.size or s.size != y.size or s.size != g.size or res is None:
        return []
    if mask is not None:
        keep = np.asarray(list(mask), dtype=bool)
        if keep.size != s.size:
            return []
        s, y, g = s[keep], y[keep], g[keep]
    out = [("overall", s, y, True)]
    for name in core_audit.group_order(report.grouping):
        m = g == name
        if not m.any():
            continue
        gm = res.groups.get(name)
        out.append((name, s[m], y[m], bool(gm and gm.sufficient)))
    return out


def roc_svg(report: AuditReport, result: core_audit.AuditResult | None = None,
            mask: Sequence[bool] | None = None) -> str:
    res = report.result if result is None else result
    parts = _axes("1 − specificity (false-positive rate)", "sensitivity (true-positive rate)")
    legend = []
    for name, s, y, plotted in _curve_groups(report, result, mask):
        gm = res.overall if name == "overall" else res.groups[name]  # type: ignore[union-attr]
        if not plotted or not (0 < y.sum() < y.size):
            legend.append(("#ddd", f"{_group_title(name)}: insufficient (n={y.size})", ""))
            continue
        fpr, tpr, _ = core_audit.roc_curve(y, s)
        pts = " ".join("{:.1f},{:.1f}".format(*_xy(a, b)) for a, b in zip(fpr, tpr, strict=True))
        colour = GROUP_COLOURS.get(name, "#333")
        width = 2.8 if name == "overall" else 1.8
        dash = "6 3" if name == "unknown" else ""
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{width}"{d}/>')
        legend.append((colour, f"{_group_title(name)} AUROC {_num(gm.auroc)} (n={gm.n})", dash))
    return _svg(parts, legend, "ROC curves per skin type")


def calibration_svg(report: AuditReport) -> str:
    parts = _axes("mean predicted malignancy (bin)", "observed share malignant")
    legend = []
    for name, s, y, plotted in _curve_groups(report):
        if not plotted:
            legend.append(("#ddd", f"{_group_title(name)}: insufficient (n={y.size})", ""))
            continue
        cal = core_audit.calibration_curve(y, s)
        colour = GROUP_COLOURS.get(name, "#333")
        ok = np.isfinite(cal.mean_predicted) & np.isfinite(cal.observed_rate)
        if not ok.any():
            continue
        xs, ys, ns = cal.mean_predicted[ok], cal.observed_rate[ok], cal.count[ok]
        pts = " ".join("{:.1f},{:.1f}".format(*_xy(a, b)) for a, b in zip(xs, ys, strict=True))
        dash = "6 3" if name == "unknown" else ""
        d = f' stroke-dasharray="{dash}"' if dash else ""
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.6"{d}/>')
        for a, b, n in zip(xs, ys, ns, strict=True):
            px, py = _xy(a, b)
            r = 2.0 + 4.0 * math.sqrt(n / max(1, s.size))
            parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{r:.1f}" fill="{colour}" fill-opacity="0.75">'
                         f'<title>{_esc(_group_title(name))}: {n} images, predicted {a:.2f}, observed {b:.2f}</title>'
                         "</circle>")
        gm = report.result.overall if name == "overall" else report.result.groups[name]  # type: ignore[union-attr]
        legend.append((colour, f"{_group_title(name)} ECE {_num(gm.ece)}", dash))
    return _svg(parts, legend, "Calibration (reliability) per skin type")


def saliency_svg(summary: Mapping[str, GroupSaliency], min_n: int) -> str:
    """Box plot (quartiles, median, mean) of the ratio per group, with the lesion-area chance level."""
    rows = [(k, v) for k, v in summary.items()]
    row_h, left, width = 26, 150, 360
    height = 30 + row_h * len(rows) + 30
    parts = [f'<rect x="{left}" y="20" width="{width}" height="{row_h * len(rows)}" fill="#fff" stroke="#444"/>']
    for i in range(11):
        px = left + width * i / 10
        parts.append(f'<line x1="{px:.1f}" y1="20" x2="{px:.1f}" y2="{20 + row_h * len(rows)}" stroke="#eee"/>')
        if i % 2 == 0:
            parts.append(f'<text x="{px:.1f}" y="{34 + row_h * len(rows)}" class="tick" '
                         f'text-anchor="middle">{i / 10:.1f}</text>')
    parts.append(f'<text x="{left + width / 2}" y="{52 + row_h * len(rows)}" class="axl" text-anchor="middle">'
                 "share of Grad-CAM mass inside the lesion</text>")
    for i, (name, gs) in enumerate(rows):
        cy = 20 + row_h * i + row_h / 2
        colour = GROUP_COLOURS.get(name, "#333")
        parts.append(f'<text x="{left - 8}" y="{cy + 4}" class="leg" text-anchor="end">{_esc(_group_title(name))}</text>')
        if gs.n < min_n:
            parts.append(f'<text x="{left + 8}" y="{cy + 4}" class="leg" fill="#777">insufficient (n={gs.n})</text>')
            continue
        x = lambda v: left + width * float(v)  # noqa: E731
        parts.append(f'<rect x="{x(gs.q1):.1f}" y="{cy - 8}" width="{max(1.0, x(gs.q3) - x(gs.q1)):.1f}" height="16" '
                     f'fill="{colour}" fill-opacity="0.35" stroke="{colour}"/>')
        parts.append(f'<line x1="{x(gs.median):.1f}" y1="{cy - 8}" x2="{x(gs.median):.1f}" y2="{cy + 8}" '
                     f'stroke="{colour}" stroke-width="2.5"/>')
        parts.append(f'<circle cx="{x(gs.mean):.1f}" cy="{cy}" r="3.5" fill="#000"/>')
        if _finite(gs.lesion_fraction_mean):
            parts.append(f'<line x1="{x(gs.lesion_fraction_mean):.1f}" y1="{cy - 11}" x2="{x(gs.lesion_fraction_mean):.1f}" '
                         f'y2="{cy + 11}" stroke="#c00" stroke-dasharray="2 2" stroke-width="1.5"/>')
    return (f'<svg class="plot" role="img" aria-label="Saliency-in-lesion ratio per skin type" width="{left + width + 20}" '
            f'height="{height}" viewBox="0 0 {left + width + 20} {height}">' + "".join(parts) + "</svg>")


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


def _metric_cell(gm: core_audit.GroupMetrics, m: str) -> str:
    return f"{_num(getattr(gm, m))} {_ci(getattr(gm, f'{m}_ci95'))}"


def _source_text(src: str, gm: core_audit.GroupMetrics | None = None) -> str:
    """Where a group's skin types came from; a group holding both says how many of each."""
    if src == "mixed" and gm is not None and (gm.n_label or gm.n_estimated):
        return f"mixed: {gm.n_label} label + {gm.n_estimated} estimated"
    return {"label": "label (clinician/annotator)", "estimated": "image estimate",
            "mixed": "mixed: label + estimate"}.get(src, src)


def metrics_table(result: core_audit.AuditResult) -> str:
    head = ("<tr><th>Group</th><th>FST from</th><th>n</th><th>malignant</th><th>AUROC [95% CI]</th>"
            + "".join(f"<th>{lab}</th>" for _, lab in _METRIC_LABELS) + "<th>ECE</th><th>Brier</th></tr>")
    rows = []
    for name, gm in [("overall", result.overall), *result.groups.items()]:
        cls = "overall" if name == "overall" else ("ok" if gm.sufficient else "insufficient")
        swatch = f'<span class="sw" style="background:{GROUP_COLOURS.get(name, "#333")}"></span>'
        cells = [f"<td>{swatch}{_esc(_group_title(name))}</td>", f"<td>{_esc(_source_text(gm.fst_source, gm))}</td>",
                 f"<td class='n'>{gm.n}</td>", f"<td class='n'>{gm.n_pos}</td>"]
        if name != "overall" and not gm.sufficient:
            why = f"n={gm.n}, {gm.n_pos} malignant, {gm.n_neg} benign"
            cells.append(f'<td colspan="7" class="insuf">insufficient (n={gm.n}) — no statistic is reported '
                         f"for this group ({_esc(why)}; needs n ≥ {core_audit.MIN_GROUP_N} and ≥ "
                         f"{core_audit.MIN_CLASS_N} of each class)</td>")
        else:
            cells.append(f"<td>{_metric_cell(gm, 'auroc')}</td>")
            cells.extend(f"<td>{_metric_cell(gm, m)}</td>" for m, _ in _METRIC_LABELS)
            cells.append(f"<td>{_metric_cell(gm, 'ece')}</td>")
            cells.append(f"<td>{_metric_cell(gm, 'brier')}</td>")
        rows.append(f'<tr class="{cls}">' + "".join(cells) + "</tr>")
    return f'<table class="metrics">{head}{"".join(rows)}</table>'


def gap_block(result: core_audit.AuditResult) -> str:
    gg = list(result.gap_groups) or [g for g in core_audit.group_order(result.grouping)
                                       if g != "unknown" and g in result.groups and result.groups[g].sufficient]
    if len(gg) < 2 or not _finite(result.auroc_gap):
        return ('<p class="gap"><b>AUROC gap:</b> not computable — fewer than two skin-type groups have enough '
                f"images (n ≥ {core_audit.MIN_GROUP_N}, ≥ {core_audit.MIN_CLASS_N} malignant and benign). "
                "This is not evidence of fairness; it is missing evidence.</p>")
    aucs = {g: result.groups[g].auroc for g in gg}
    hi = max(aucs, key=lambda k: aucs[k])
    lo = min(aucs, key=lambda k: aucs[k])
    return (f'<p class="gap"><b>AUROC gap</b> (best − worst over the sufficient skin types {", ".join(gg)}): '
            f"<b>{_num(result.auroc_gap)}</b> {_ci(result.auroc_gap_ci95)} — highest {_group_title(hi)} "
            f"({_num(aucs[hi])}), lowest {_group_title(lo)} ({_num(aucs[lo])}). "
            f"<b>Sensitivity gap</b> at the threshold: {_num(result.sensitivity_gap)}.</p>")


def _fst_note(report: AuditReport) -> str:
    src = list(report.fst_sources)
    if not src:
        return ""
    n_lab = sum(1 for s in src if s == "label")
    est = [g for g, s in zip(report.groups, src, strict=False) if s == "estimated"]
    if not est:
        return (f"<p><b>Skin type source.</b> The Fitzpatrick label of the labels file (a clinician's or an "
                f"annotator's) for all {n_lab} audited images; no estimate was used.</p>")
    n_unknown = sum(1 for g in est if g == "unknown")
    text = (f"<p><b>Skin type source.</b> {n_lab} images have a Fitzpatrick label (a clinician's or an annotator's). "
            f"For {len(est)} images the label was empty, so the engine's image-based estimate (colour of the "
            "visible skin around the lesion) was used; the \"FST from\" column says for every group whether its "
            "types are labels, estimates, or a mix, with the counts of each. ")
    if n_unknown:
        text += (f"For {n_unknown} of them no estimate was possible (for example masked crops that show no "
                 "surrounding skin); they form the group \"unknown\", which never enters the gaps. ")
    return text + "An estimate is a proxy for, not a measurement of, the Fitzpatrick type.</p>"


def _kv_table(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_kv_table(v, key + "."))
        else:
            if isinstance(v, float):
                text = f"{v:.4g}"
            elif isinstance(v, (list, tuple, Mapping)):
                text = json.dumps(v, ensure_ascii=False)
            else:
                text = str(v)
            if len(text) > 400:
                text = text[:400] + "…"
            rows.append(f"<tr><th>{_esc(key)}</th><td>{_esc(text)}</td></tr>")
    return rows


def model_section(card: Mapping[str, Any]) -> str:
    main = [("name", card.get("name")), ("version", card.get("version")), ("file", card.get("file")),
            ("sha256", card.get("sha256")), ("size", f"{card['size_bytes'] / 1e6:.1f} MB" if card.get("size_bytes")
                                               else None),
            ("operating threshold (card)", card.get("threshold"))]
    rows = [f"<tr><th>{_esc(k)}</th><td><code>{_esc(v)}</code></td></tr>" for k, v in main if v is not None]
    out = ['<h2 id="model">Model card summary</h2>', f'<table class="kv">{"".join(rows)}</table>']
    prov = card.get("provenance") or {}
    if prov:
        out.append("<h3>Provenance</h3>")
        out.append(f'<table class="kv">{"".join(_kv_table(prov))}</table>')
    metrics = card.get("metrics") or {}
    if metrics:
        out.append("<h3>Metrics stated on the card</h3>")
        out.append(f'<table class="kv">{"".join(_kv_table(metrics))}</table>')
    return "\n".join(out)


def _list_section(title: str, anchor: str, items: Sequence[tuple[str, str]], empty: str, intro: str) -> str:
    if not items:
        return f'<h2 id="{anchor}">{_esc(title)}</h2><p>{_esc(empty)}</p>'
    rows = "".join(f"<tr><td><code>{_esc(a)}</code></td><td>{_esc(b)}</td></tr>" for a, b in items)
    return (f'<h2 id="{anchor}">{_esc(title)} ({len(items)})</h2><p>{_esc(intro)}</p>'
            f'<table class="list"><tr><th>image</th><th>reason</th></tr>{rows}</table>')


def explanation_section(report: AuditReport) -> str:
    out = ['<h2 id="explain">Explanation comparison by skin type</h2>']
    summary = report.saliency
    if not summary:
        out.append("<p>No explanation analysis was run for this audit.</p>")
        return "\n".join(out)
    min_n = core_audit.MIN_GROUP_N
    out.append(
        "<p>For each image the runtime Grad-CAM map of the malignancy score was compared with the lesion mask: "
        "the <b>saliency-in-lesion ratio</b> is the share of the map's mass that falls on the lesion. The red "
        "dashed mark is the lesion's mean <i>area</i> share, the ratio a map spread evenly over the image would "
        "get; <b>lift</b> = ratio ÷ area share (1 = no preference for the lesion). A model that looks at the "
        "lesion on light skin but at the surrounding skin on dark skin shows a lower ratio and lift for the "
        "darker groups.</p>")
    if report.saliency_note:
        out.append(f"<p>{_esc(report.saliency_note)}</p>")
    head = ("<tr><th>Group</th><th>images</th><th>with a ratio</th><th>mean ratio ± sd</th><th>median [IQR]</th>"
            "<th>lesion area share</th><th>lift</th><th>mask</th></tr>")
    rows = []
    for name, gs in summary.items():
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(gs.mask_kinds.items()))
        cells = [f"<td>{_esc(_group_title(name))}</td>", f"<td class='n'>{gs.n_images}</td>",
                 f"<td class='n'>{gs.n}</td>"]
        if gs.n < min_n:
            cells.append(f'<td colspan="4" class="insuf">insufficient (n={gs.n})</td>')
        else:
            cells += [f"<td>{_num(gs.mean)} ± {_num(gs.sd)}</td>",
                      f"<td>{_num(gs.median)} [{_num(gs.q1)}–{_num(gs.q3)}]</td>",
                      f"<td>{_num(gs.lesion_fraction_mean)}</td>", f"<td>{_num(gs.lift, 2)}</td>"]
        cells.append(f"<td class='small'>{_esc(kinds)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    out.append(f'<table class="metrics">{head}{"".join(rows)}</table>')
    out.append(saliency_svg(summary, min_n))
    # Mean-heatmap strip
    strip = []
    for name, gs in summary.items():
        if name == "overall":
            continue
        tiles = []
        if gs.mean_cam is not None:
            label = f"mean of {gs.n_images}" + (" (insufficient)" if gs.n < min_n else "")
            tiles.append(f'<figure><img alt="mean Grad-CAM, {_esc(_group_title(name))}" '
                         f'src="{png_data_uri(_heat_rgb(gs.mean_cam))}"><figcaption>{_esc(label)}</figcaption></figure>')
        for ex in report.examples.get(name, ()):
            try:
                img = _shrink(np.asarray(ex.image, dtype=np.uint8), 96)
                ov = overlay(img, np.clip(np.asarray(ex.cam, dtype=np.float32), 0, 1))
            except ValueError:
                continue
            tiles.append(f'<figure><img alt="example" src="{png_data_uri(ov)}">'
                         f"<figcaption>{_esc(ex.caption)}</figcaption></figure>")
        if tiles:
            strip.append(f'<div class="strip"><div class="strip-label">{_esc(_group_title(name))}</div>'
                         + "".join(tiles) + "</div>")
    if strip:
        out.append("<h3>Mean Grad-CAM per group and examples</h3>"
                   "<p>First tile: the group's mean malignancy Grad-CAM (in the model's 254×254 input frame; blue "
                   "low, red high). Then examples from the group with their own map over the model input. Compare "
                   "where the warm region sits relative to the lesion, not the absolute colours.</p>")
        out.extend(strip)
    return "\n".join(out)


HOW_TO_READ = """
<h2 id="read">How to read this report</h2>
<ul>
<li><b>What was measured.</b> Every labelled image was scored by the model named below; its malignancy score
(p(melanoma) + p(basal cell carcinoma) + p(actinic keratosis / intraepithelial carcinoma)) was compared with the
biopsy-based label, separately for each Fitzpatrick skin type (FST I = very light … VI = very dark).</li>
<li><b>AUROC</b> is the chance that a malignant lesion scores higher than a benign one (0.5 = coin toss, 1 =
perfect ranking); it does not depend on the threshold. <b>Sensitivity</b> is the share of malignant lesions
flagged, <b>specificity</b> the share of benign lesions not flagged, <b>PPV</b>/<b>NPV</b> the share of flagged /
not-flagged lesions that really are malignant / benign — all at the operating threshold shown above. PPV and NPV
depend on how common malignancy is in the audited set, so they do not transfer to a clinic with another mix.</li>
<li><b>ECE</b> (expected calibration error, 10 bins) is the average distance between predicted and observed
malignancy rates; <b>Brier</b> is the mean squared error of the score. Lower is better for both. The calibration
plot shows the same thing: points on the dashed diagonal mean "a score of 0.3 is malignant 30% of the time".</li>
<li><b>Brackets</b> are 95% confidence intervals from a seeded stratified bootstrap (malignant and benign
images resampled separately). Wide intervals mean the data cannot pin the number down: treat overlapping
intervals as "no demonstrated difference", not as "equal".</li>
<li><b>Insufficient groups.</b> A group with fewer than 30 images, or fewer than 5 malignant or 5 benign ones,
gets no number at all: any statistic on so few images would be noise that looks like evidence. Such groups are
also left out of the gaps. An audit with insufficient dark-skin groups has <i>not</i> shown the model to be fair
on dark skin; collect more labelled images of those groups.</li>
<li><b>AUROC gap</b> is the best minus the worst AUROC over the sufficient skin types, with its own bootstrap
interval. A best-minus-worst difference is never negative and noise alone spreads small groups apart, so the gap
and its interval lean high and the interval cannot contain 0 even when the groups do not differ. Read it as "how
large a gap the data allow"; whether two groups really differ is shown by their own AUROC intervals (overlap =
no demonstrated difference).</li>
<li><b>Skin type source.</b> Where the labels file gave no Fitzpatrick type, the engine's image-based estimate from
the skin around the lesion was used; the "FST from" column gives, per group, how many types are labels and how many
estimates. Images where neither exists form the group "unknown", which is reported but never compared.</li>
<li><b>Groups.</b> Per type (I–VI) or DDI-style (I–II, III–IV, V–VI, as the Diverse Dermatology Images study
reports dark skin): pooled groups stay above n = 30 where single types are small.</li>
<li><b>Explanations.</b> The saliency-in-lesion ratio asks whether the model's attention (Grad-CAM) lies on the
lesion. Compare each group's ratio with its lesion area share (chance level) and with the other groups. Grad-CAM
is coarse (8×8 cells over the image), so small lesions cannot reach a ratio of 1.</li>
<li><b>Scope.</b> These numbers describe this labelled set only. The tool is decision support; it does not
diagnose, and a fairness audit on one data set does not certify a model for another population.</li>
</ul>
"""

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1b1b1b;line-height:1.45;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:1.8em}
.sub{color:#555;margin-top:4px}
table{border-collapse:collapse;margin:8px 0 12px}th,td{border:1px solid #ccc;padding:4px 7px;text-align:left;
vertical-align:top}th{background:#f2f2f2}td.n{text-align:right}.ci{color:#666;font-size:.88em;white-space:nowrap}
tr.overall td{font-weight:600;background:#fafafa}tr.insufficient td{background:#fff7e6}
td.insuf{color:#8a5a00;font-style:italic}.sw{display:inline-block;width:10px;height:10px;margin-right:6px;
border-radius:2px}.gap{background:#eef5ff;border:1px solid #bcd;padding:8px 10px}
.plots{display:flex;flex-wrap:wrap;gap:18px}.tick{font-size:10px;fill:#444}.axl{font-size:11px;fill:#222}
.leg{font-size:11px;fill:#222}table.kv th{width:260px;font-weight:500}code{font-size:.9em;word-break:break-all}
.strip{display:flex;align-items:flex-start;gap:8px;margin:6px 0;flex-wrap:wrap}.strip-label{width:90px;
font-weight:600;padding-top:36px}figure{margin:0;text-align:center}figure img{width:96px;height:96px;
image-rendering:auto;border:1px solid #ccc}figcaption{font-size:10px;color:#444;max-width:110px}
.small{font-size:.85em}.warn{background:#fff3f3;border:1px solid #e0b4b4;padding:8px 10px}
"""


def neoplasm_section(report: AuditReport) -> str:
    """Malignant vs benign neoplasms (non-neoplastic conditions left out), beside the headline."""
    nr = report.neoplasm_result
    if not report.neoplasm_mask:
        return ""
    if nr is None:
        return ('<h2 id="neoplasm">Malignant vs benign neoplasms</h2><p>Not computable: the labels have a lesion '
                "category, but the images left after removing the non-neoplastic ones do not hold both classes.</p>")
    n_excl = len(report.neoplasm_mask) - sum(bool(v) for v in report.neoplasm_mask)
    return "\n".join([
        '<h2 id="neoplasm">Malignant vs benign neoplasms</h2>',
        f'<p class="sub">The same scores, with the {n_excl} non-neoplastic (inflammatory) or uncategorised images '
        f"left out: {nr.overall.n_pos} malignant against {nr.overall.n_neg} benign neoplasms. A harder question "
        "than the headline, since inflammatory conditions are easy to tell from cancer.</p>",
        metrics_table(nr), gap_block(nr),
        f'<div class="plots">{roc_svg(report, nr, report.neoplasm_mask)}</div>',
    ])


def render_html(report: AuditReport) -> str:
    """The complete report as one HTML string (UTF-8, no external resources)."""
    card = report.model_card
    generated = report.generated or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    res = report.result
    threshold = res.threshold if res is not None else card.get("threshold")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
        "style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(report.title)} — {_esc(card.get('name', ''))}</title>", f"<style>{_CSS}</style></head><body>",
        f"<h1>{_esc(report.title)}</h1>",
        f'<p class="sub">Model <b>{_esc(card.get("name", "?"))}</b> {_esc(card.get("version", ""))} '
        f'(sha256 <code>{_esc(str(card.get("sha256", ""))[:16])}…</code>) · operating threshold '
        f"<b>{_num(threshold, 3)}</b> · generated {_esc(generated)}"
        + (f" · MENDICANT Desktop {_esc(report.app_version)}" if report.app_version else "") + "</p>",
    ]
    src = []
    if report.labels_path:
        src.append(f"labels <code>{_esc(report.labels_path)}</code>")
    if report.images_dir:
        src.append(f"images <code>{_esc(report.images_dir)}</code>")
    n_scored = res.overall.n if res is not None else 0
    src.append(f"{n_scored} images audited, {len(report.failed)} failed to load or score, "
               f"{len(report.skipped)} label rows unusable")
    parts.append(f'<p class="sub">{" · ".join(src)}</p>')
    parts.append('<p class="sub">Contents: <a href="#table">metrics</a> · <a href="#curves">ROC and calibration</a>'
                 ' · <a href="#explain">explanations</a> · <a href="#model">model card</a> · '
                 '<a href="#failed">failed images</a> · <a href="#read">how to read this report</a></p>')
    if report.failed:
        parts.append(f'<p class="warn">{len(report.failed)} image(s) could not be scored and are <b>not</b> in the '
                     'statistics; they are listed under <a href="#failed">failed images</a>.</p>')
    for note in report.notes:
        parts.append(f'<p class="warn">{_esc(note)}</p>')
    grouping_text = ("DDI-style groups I–II / III–IV / V–VI" if report.grouping == "ddi" else "each type I–VI")
    headline = "malignant vs the rest" if report.neoplasm_mask else ""
    parts.append('<h2 id="table">Metrics by Fitzpatrick skin type' + (f" — {headline}" if headline else "") + "</h2>")
    parts.append(f'<p class="sub">Skin-type groups: {grouping_text}.'
                 + (" Headline comparison: every malignant image against all others (benign neoplasms and "
                    "non-neoplastic conditions)." if headline else "") + "</p>")
    if res is None:
        parts.append('<p class="warn">No image could be scored, so there is nothing to audit.</p>')
    else:
        parts.append(metrics_table(res))
        parts.append(gap_block(res))
        parts.append(_fst_note(report))
        parts.append(f'<p class="small">95% intervals: stratified bootstrap, {report.n_boot} resamples, seed '
                     f"{report.seed}. Operating point: score ≥ {_num(res.threshold)} is a positive call.</p>")
        parts.append('<h2 id="curves">ROC curves and calibration</h2>')
        if _curve_groups(report):
            parts.append(f'<div class="plots">{roc_svg(report)}{calibration_svg(report)}</div>')
        else:
            parts.append("<p>Curves unavailable (per-image scores were not supplied).</p>")
        parts.append(neoplasm_section(report))
    parts.append(explanation_section(report))
    parts.append(model_section(card))
    parts.append(_list_section("Failed images", "failed", list(report.failed), "Every listed image was scored.",
                               "These images are excluded from every number above."))
    if report.skipped:
        parts.append(_list_section("Unusable label rows", "skipped", list(report.skipped), "",
                                   "These rows of the labels file had no usable image name, malignancy label "
                                   "or skin type and were not scored."))
    parts.append(HOW_TO_READ)
    parts.append("</body></html>")
    return "\n".join(p for p in parts if p)


def report_dict(report: AuditReport) -> dict[str, Any]:
    """METRICS.json: ``model``, ``threshold``, ``overall``, ``groups``, ``auroc_gap``, ``auroc_gap_ci95`` (from
    :meth:`AuditResult.to_dict`) plus ``model_card``, counts, ``failed``, ``skipped``, per-image ``images`` and ``explanation``."""
    card = report.model_card
    res = report.result
    if res is not None:
        d = res.to_dict(model=str(card.get("name", res.model or "")))
    else:
        d = {"model": card.get("name"), "threshold": card.get("threshold"), "overall": None, "groups": {},
             "auroc_gap": None, "auroc_gap_ci95": [None, None], "sensitivity_gap": None}
    d["gap_groups"] = list(res.gap_groups) if res is not None else []
    d["grouping"] = report.grouping
    if report.neoplasm_mask:
        nr = report.neoplasm_result
        d["malignant_vs_benign_neoplasm"] = None if nr is None else {
            **nr.to_dict(model=str(card.get("name", nr.model or ""))), "gap_groups": list(nr.gap_groups)}
    d["model_card"] = {k: card.get(k) for k in ("name", "version", "file", "sha256", "size_bytes", "threshold")}
    d["model_card"]["provenance"] = dict(card.get("provenance") or {})
    d["model_card"]["metrics"] = dict(card.get("metrics") or {})
    srcs = list(report.fst_sources)
    d["fst_source_counts"] = {s: srcs.count(s) for s in sorted(set(srcs))}
    d["n_boot"] = int(report.n_boot)
    d["seed"] = int(report.seed)
    d["n_audited"] = res.overall.n if res is not None else 0
    d["failed"] = [{"image": a, "reason": b} for a, b in report.failed]
    d["skipped"] = [{"image": a, "reason": b} for a, b in report.skipped]
    if report.per_image:
        d["images"] = [dict(r) for r in report.per_image]
    if report.saliency:
        d["explanation"] = {
            "method": "gradcam-malignancy saliency-in-lesion ratio",
            "min_group_n": core_audit.MIN_GROUP_N,
            "groups": {k: v.to_dict() for k, v in report.saliency.items()},
        }
    # strict JSON: a model card written before cards were strict carries NaN for a group it could not score
    return strict_json(d)
