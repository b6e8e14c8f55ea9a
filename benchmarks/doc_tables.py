"""The figure tables of the docs, generated from the benchmarks' JSON under ``benchmarks/results/``.

A doc holds each generated table between two markers naming the JSON file and the table::

    <!-- BEGIN GENERATED batch_benchmark.json throughput: python benchmarks/doc_tables.py; do not edit -->
    ...
    <!-- END GENERATED -->

``python benchmarks/doc_tables.py`` rewrites every such block from the JSON; ``--check`` only reports the blocks
that differ (exit 1). ``tests/test_doc_tables.py`` runs the check, so a doc never shows figures its JSON does not
hold. The JSON files are written by ``benchmarks/batch_benchmark.py``, ``benchmarks/gui_benchmark.py`` and
``benchmarks/bundle_size.py`` and ``python -m compression.domain --results``; re-run one, then this script, and commit
both. ``model_card.json`` names the
bundled model's card (``resources/models/*.json``, written by ``compression/card.py``): when the bundled model
is replaced, run this script to bring the docs' card tables along.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
#: The docs that carry generated tables.
DOCS = ("docs/batch.md", "docs/gui.md", "docs/production_deployment_guide.md", "docs/model_card.md", "docs/api.md",
        "docs/domain_check.md")
#: The pseudo results file that stands for the bundled model's card.
MODEL_CARD = "model_card.json"
MB = 1e6

BLOCK = re.compile(
    r"(?P<begin><!-- BEGIN GENERATED (?P<json>[\w.-]+\.json) (?P<table>[\w-]+)[^>]*-->\n)(?P<body>.*?)"
    r"(?P<end><!-- END GENERATED -->)",
    re.S,
)


def _n(v: float | None, fmt: str = "{:.1f}", missing: str = "not measured") -> str:
    return missing if v is None else fmt.format(v)


def _model(d: dict[str, Any]) -> str:
    m = d.get("model") or {}
    return f"`{m.get('name', '?')}` {m.get('version', '?')}"


# ---------------------------------------------------------------------------------------------- batch


def batch_throughput(d: dict[str, Any]) -> str:
    lines = [
        f"Measured {d['generated_utc']} by `benchmarks/batch_benchmark.py` with {_model(d)}, batch size "
        f"{d['batch_size']}, {d['threads']} threads, on {d['cpus']} cores (CPU features: "
        f"{', '.join(d['cpu_features']) or 'none recorded'}). Wall time includes start-up; other jobs shared the "
        "machine when the load average exceeds the core count.",
        "",
        "| run | images | wall images/s | peak RSS | CPU per image | cores it got | load average (before / after) | exit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        lines.append(f"| {r['label']} | {r['images']:,} | {_n(r['images_per_s'])} | {r['peak_rss_mb']:.0f} MB | "
                     f"{_n(r['cpu_ms_per_image'])} ms | {r['cores_used']:.2f} | {r['load_before']:.1f} / "
                     f"{r['load_after']:.1f} | {r['exit']} |")
    return "\n".join(lines) + "\n"


def batch_stages(d: dict[str, Any]) -> str:
    st = d["stage_cpu_ms_per_image"]
    total = sum(st.values())
    lines = [f"CPU time per image of each stage, run serially on {d['stage_images']} of the images (process CPU "
             "time, so other jobs' load does not inflate it):", "",
             "| stage | CPU ms per image | share |", "|---|---|---|"]
    lines += [f"| {k} | {v:.2f} | {100 * v / total:.0f}% |" for k, v in st.items()]
    lines.append(f"| **all** | **{total:.2f}** | 100% |")
    lines += ["", f"So {d['cpus']} idle cores cannot exceed about {d['cpus'] * 1000 / total:.0f} images/s with this "
              "model."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- gui


def gui_performance(d: dict[str, Any]) -> str:
    t = d["targets"]
    lines = [f"Measured {d['generated_utc']} by `benchmarks/gui_benchmark.py` with {_model(d)}, Qt platform "
             f"`{d['platform']}`, {d['runs']} runs each, on {d['cpus']} cores at load average "
             f"{d['load_before']:.1f} (before) / {d['load_after']:.1f} (after):", "",
             "| measure | median | range | target |", "|---|---|---|---|"]
    c = d.get("cold_start_s")
    if c:
        ok = "met" if c["median"] <= t["cold_start_s"] else "missed"
        lines.append(f"| cold start to window with model loaded | {c['median']:.2f} s | {c['min']:.2f}–{c['max']:.2f} s "
                     f"(the first start, compiling bytecode: {c['first_compiling']:.2f} s) | ≤ {t['cold_start_s']} s: "
                     f"{ok} |")
    r = d["drop_to_result_ms"]
    ok = "met" if r["median"] <= t["drop_to_result_ms"] else "missed"
    lines.append(f"| drop-to-result, 4000×3000 JPEG ({r['jpeg_mb']:.1f} MB) | {r['median']:.0f} ms | "
                 f"{r['min']:.0f}–{r['max']:.0f} ms | ≤ {t['drop_to_result_ms']:.0f} ms: {ok} |")
    lines += ["", f"Of the drop, the worker (read to Grad-CAM) took {r['worker_ms']:.0f} ms and the GUI thread with "
              f"queueing {r['gui_thread_ms']:.0f} ms (medians)."]
    return "\n".join(lines) + "\n"


def gui_stages(d: dict[str, Any]) -> str:
    lines = ["Each step of the worker's path alone, best of the runs (the app layer's `read_source`, `prepare`, the "
             "engine, `complete`):", "", "| step | best ms |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in d["stages_best_ms"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- bundle


def _component(d: dict[str, Any], prefix: str) -> int | None:
    return next((v for k, v in d["components"].items() if k.startswith(prefix)), None)


def bundle_budgets(d: dict[str, Any]) -> str:
    v = d.get("versions", {})
    comp = d.get("compressed", {})
    model = _component(d, "resources: model")
    lines = [f"Measured {d['generated_utc']} by `benchmarks/bundle_size.py` on `{d['dist']}` (bundled model "
             f"{_model(d)}; Python {v.get('python', '?')}, PySide6-Essentials {v.get('PySide6-Essentials', '?')}, "
             f"onnxruntime {v.get('onnxruntime', '?')}, numpy {v.get('numpy', '?')}, Pillow {v.get('pillow', '?')}, "
             f"PyInstaller {v.get('pyinstaller', '?')}). MB = 10^6 bytes.", "",
             "| measure | value | budget / target |", "|---|---|---|"]
    total = d["unpacked_bytes"] / MB
    lines.append(f"| unpacked bundle | **{total:.1f} MB** | ≤ 250 MB {'✔' if total <= 250 else '✘'} / target ≤ 150 MB "
                 f"{'✔' if total <= 150 else '✘'} |")
    lines.append(f"| of which the model (`.onnx`, `.head.npz`, card) | {_n(model and model / MB)} MB | – |")
    lines.append(f"| without the model | {_n(model and total - model / MB)} MB | – |")
    for name, n in comp.items():
        lines.append(f"| bundle folder as {name} | **{n / MB:.1f} MB** | as small as it goes |")
    if d.get("naive_unpacked_bytes"):
        lines.append(f"| no-exclusion build of the same spec | {d['naive_unpacked_bytes'] / MB:.0f} MB | – |")
    return "\n".join(lines) + "\n"


def bundle_components(d: dict[str, Any]) -> str:
    lines = [f"Breakdown of the {d['unpacked_bytes'] / MB:.1f} MB:", "", "| component | MB |", "|---|---|"]
    lines += [f"| {k} | {v / MB:.1f} |" for k, v in d["components"].items()]
    return "\n".join(lines) + "\n"


def bundle_exclusions(d: dict[str, Any]) -> str:
    lines = ["| exclusion | saved MB | installed MB | how measured | why |", "|---|---|---|---|---|"]
    for r in d.get("exclusions", []):
        saved = "n/a" if r["saved_bytes"] is None else f"{r['saved_bytes'] / MB:.1f}"
        inst = "–" if r["installed_bytes"] is None else f"{r['installed_bytes'] / MB:.1f}"
        lines.append(f"| {r['group']} | {saved} | {inst} | {r['how']} | {r['reason']} |")
    if d.get("unattributed_bytes") is not None:
        lines += ["", f"Another {d['unattributed_bytes'] / MB:.1f} MB of the no-exclusion build are transitive "
                  "dependencies of the excluded packages that no rule names."]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- model card


def card_limitations(d: dict[str, Any]) -> str:
    lines = [f"From the card of {_model_of_card(d)}:", ""]
    lines += [f"* {item}" for item in d.get("limitations", [])]
    return "\n".join(lines) + "\n"


def card_calibration(d: dict[str, Any]) -> str:
    cal = d["provenance"]["calibration"]
    method = cal.get("method") or d["provenance"].get("quantization", {}).get("calibration_method", "?")
    isic = f", {cal['isic']} of them ISIC dermoscopy" if cal.get("isic") else ""
    lines = [f"{_model_of_card(d)}: {cal['n']} calibration inputs ({cal['n_distinct']} distinct images{isic}), method "
             f"`{method}`; {cal['source']}.", "",
             "| FST group | available | distinct drawn | inputs (with repeats) |", "|---|---|---|---|"]
    for g, r in cal["per_group"].items():
        lines.append(f"| {g} | {r['available']:,} | {r['distinct']} | {r['taken']} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text for a Markdown table cell (a literal ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def _fig(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) and x == x else "–"


def _auroc_ci(e: dict[str, Any] | None) -> str:
    if not e or e.get("auroc") is None or e["auroc"] != e["auroc"]:
        return "insufficient" if e and e.get("sufficient") is False else "–"
    ci = e.get("auroc_ci95")
    return f"{e['auroc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{e['auroc']:.3f}"


#: The adapted card's gate-split questions, in words.
_QUESTION_NAMES = {"isic_mel_vs_nv": "ISIC external, melanoma vs nevus (p(mel))",
                   "isic_malignancy": "ISIC external, malignancy score",
                   "pad_fst_labelled": "PAD-UFES-20, clinician-FST-labelled, malignancy score",
                   "fitz_malignant": "Fitzpatrick17k, malignant vs rest",
                   "fitz_malignant_vs_benign_neoplasm": "Fitzpatrick17k, malignant vs benign lesions"}


def card_gate(d: dict[str, Any]) -> str:
    """The release gate as the bundled card records it: every limit and target, measured, bound, outcome."""
    m = d["metrics"]
    gate = m["gate"]
    verdict = ("passed" if gate["passed"] else "**failed** (missed " + str(len(gate.get("missed") or []))
               + " limits)")
    lines = [f"{_model_of_card(d)}, {m['agreement_fp32_vs_int8']['n']} gate-split images, measured on "
             f"{m['agreement_fp32_vs_int8']['cpu']}: the gate {verdict}."]
    if gate.get("shipped_despite_failure"):
        lines[0] += " " + gate["shipped_despite_failure"]
    lines += ["", "| gate limit | measured | limit | outcome |", "|---|---|---|---|"]
    for c in gate["checks"]:
        if c.get("kind") != "limit":
            continue
        note = f" ({_cell(c['note'])})" if c.get("note") else ""
        lines.append(f"| {_cell(c['name'])} | {_fig(c['value'])} | {c['op']} {_fig(c['bound'])}{note} | "
                     f"{'met' if c['met'] else '**missed**'} |")
    lines += ["", "| product target | measured | target | outcome |", "|---|---|---|---|"]
    for c in m.get("targets", []):
        lines.append(f"| {_cell(c['name'])} | {_fig(c['value'])} | {c['op']} {_fig(c['bound'])} | "
                     f"{'met' if c['met'] else '**missed**'} |")
    lat = m["latency"]
    lines += ["", f"Latency (batch 1, {lat['threads']} threads, {lat['rounds']} rounds, on the gate's CPU): INT8 p50 "
              f"{lat['candidate']['p50_ms']:.0f} ms against the FP32 teacher's {lat['teacher']['p50_ms']:.0f} ms "
              f"(ratio {lat['ratio_p50']:.2f})."]
    return "\n".join(lines) + "\n"


def card_figures(d: dict[str, Any]) -> str:
    """Gate-split AUROCs of the bundled INT8 model beside its FP32 counterpart, per DDI group where gated."""
    m = d["metrics"]
    val, fp32 = m["validation"], m.get("teacher_fp32_validation", {})
    lines = ["| question | n (positive) | INT8 AUROC [95% CI] | FP32 teacher | I–II | III–IV | V–VI | gap |",
             "|---|---|---|---|---|---|---|---|"]
    for q, e in val.items():
        groups = e.get("groups") or {}
        cells = [_auroc_ci(groups.get(g)) if groups else "" for g in ("I-II", "III-IV", "V-VI")]
        lines.append(f"| {_QUESTION_NAMES.get(q, q)} | {e['n']} ({e['n_pos']}) | {_auroc_ci(e)} | "
                     f"{_fig((fp32.get(q) or {}).get('auroc'))} | " + " | ".join(cells)
                     + f" | {_fig(e['gap']) if 'gap' in e else ''} |")
    op = m["operating_point"]
    ag = m["agreement_fp32_vs_int8"]
    lines += ["", f"Threshold {d['threshold']:.3f} ({op['rule']}); on the gate split it gives sensitivity "
              f"{op['sensitivity']:.3f} and specificity {op['specificity']:.3f} (n={op['n']}, {op['n_pos']} "
              f"malignant). INT8 against FP32 on the same images: top-1 agreement {ag['top1_agreement']:.3f}, "
              f"malignancy Spearman {ag['malignancy_spearman']:.3f}, max |Δp| {ag['max_abs_diff_probs']:.2f}."]
    return "\n".join(lines) + "\n"


def _model_of_card(d: dict[str, Any]) -> str:
    return f"`{d.get('name', '?')}` {d.get('version', '?')}"


# ---------------------------------------------------------------------------------------------- domain check


def _ci(e: dict[str, Any]) -> str:
    lo, hi = e["auroc_ci95"]
    return f"{e['auroc']:.3f} ({lo:.3f}–{hi:.3f})"


_FLAGGED_NAMES = {"fitzpatrick17k_non_neoplastic": "Fitzpatrick17k non-neoplastic photos (out of scope)",
                  "fitzpatrick17k_lesions": "Fitzpatrick17k lesions (benign and malignant)",
                  "isic_lesions": "ISIC dermoscopy lesions", "pad_lesions": "PAD-UFES-20 lesions",
                  "all_lesions": "every lesion"}


def _domain_gate_rows(g: dict[str, Any]) -> list[str]:
    lines = ["| gate split | n (out of scope vs lesions) | AUROC (95% CI) |", "|---|---|---|"]
    for key, label in (("fitzpatrick17k", "Fitzpatrick17k non-neoplastic vs Fitzpatrick17k lesions"),
                       ("all_lesions", "Fitzpatrick17k non-neoplastic vs every lesion")):
        e = g[key]
        lines.append(f"| {label} | {e['n_out_of_scope']} vs {e['n_lesions']} | {_ci(e)} |")
    lines += ["", "| gate images | n | flagged at the threshold | share |", "|---|---|---|---|"]
    for key, f in g["flagged"].items():
        lines.append(f"| {_FLAGGED_NAMES.get(key, key)} | {f['n']} | {f['flagged']} | {100 * f['share']:.1f}% |")
    return lines


def domain_gate(d: dict[str, Any]) -> str:
    e = d["entry"]
    t, c, g = e["trained_on"], e["calibration"], e["gate"]
    m = d.get("model") or {}
    sha = m.get("int8_sha256")
    on = (f"the INT8 model `{m.get('name', '?')}` (sha256 {sha[:12]}…{'; ' + m['note'] if m.get('note') else ''})"
          if sha else "the FP32 reference network (no INT8 model given)")
    lines = [f"Measured {d['generated_utc']} by `{d['generated_by']}` on {d['cpu']}, for {on}. Features: "
             f"{e['features']}, of {' and '.join(t['feature_sets'])}. Fit on the train split ({t['n_positive']} "
             f"non-neoplastic Fitzpatrick17k photos, {t['n_negative']} lesions); C = {c['c']:g} chosen on the select "
             f"split (AUROC {c['select_auroc']:.3f}); threshold {e['threshold']:.3f}, {c['threshold_rule']}. "
             f"Intervals: stratified bootstrap, {g['n_boot']} resamples.", "",
             f"On {g['measured_on']} (what the app scores):", ""]
    lines += _domain_gate_rows(g)
    ref = e.get("gate_fp32_reference")
    if ref:
        lines += ["", f"On {ref['measured_on']}:", ""]
        lines += _domain_gate_rows(ref)
    lines += ["", f"**Verdict:** {e['summary']}"]
    return "\n".join(lines) + "\n"


def domain_selection(d: dict[str, Any]) -> str:
    e, b = d["entry"], d["baseline_distance"]
    c = e["calibration"]
    lines = ["| method | features | setting | select AUROC (Fitzpatrick17k non-neoplastic vs lesions) |",
             "|---|---|---|---|"]
    lines += [f"| logistic regression{' (chosen)' if float(k) == c['c'] else ''} | {e['gate']['measured_on']} | "
              f"C = {k} | {v:.3f} |" for k, v in c["select_auroc_by_c"].items()]
    lines += [f"| PCA-Mahalanobis distance{' (its best)' if int(k) == b['n_components'] else ''} | the FP32 reference "
              f"network's features | k = {k} | {v:.3f} |" for k, v in b["select_auroc_by_k"].items()]
    gb = b["gate_fitzpatrick17k"]
    lines += ["", f"The distance at its best k ({b['n_components']}) on the gate split, on the FP32 reference network's "
              f"features: AUROC {_ci(gb)} ({gb['n_out_of_scope']} vs {gb['n_lesions']}): "
              + ("it separates." if b["separates"] else "it does **not** separate the photos, so it is not shipped.")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- quality warnings

_QUALITY_MEASURES = {
    "sharpness": "Laplacian variance at ~512 px (black masked areas left out)",
    "clipped_white": "share of the non-black pixels clipped white (every channel ≥ 250), ~128 px copy",
    "bright_luma": "95th percentile of luma over the non-black pixels",
    "lesion_share": "share of the photo the lesion mask covers",
}
_QUALITY_SETS = (("isic_dermoscopy", "ISIC"), ("pad_ufes20_clinical", "PAD"), ("fitzpatrick17k_clinical", "F17k"))


def _pcts(per: dict[str, Any], get: Callable[[dict[str, Any]], float]) -> str:
    return " / ".join(f"{100 * get(per[k]):.1f}%" for k, _ in _QUALITY_SETS)


def quality_thresholds(d: dict[str, Any]) -> str:
    """docs/gui.md: ``benchmarks/quality_benchmark.py``'s thresholds of the low-quality warnings."""
    n = ", ".join(f"{label} {d['datasets'][k]['images']:,}" for k, label in _QUALITY_SETS)
    per_set = d["datasets"][_QUALITY_SETS[0][0]]["degraded_sample"]
    lines = [
        f"Measured {d['generated_utc']} by `benchmarks/quality_benchmark.py` (commit {d['commit']}) on every image "
        f"of `../shared/data` ({n}) and on degraded copies of a seeded sample of {per_set} images per set, made in "
        "memory: Gaussian blur of σ = 0.5% / 1% of the longest side; exposure ±EV in linear light; the photo shrunk "
        "to 1/4 or 1/8 of its side onto its own skin colour. A threshold flags at most "
        f"{100 * d['max_clean_flag']:.0f}% of the clean images of every set; where it can also detect at least "
        f"{100 * d['min_detection']:.0f}% of its target degradation in every set, it is the geometric middle of the "
        "range that does both, else the clean-image limit. Percentages: ISIC / PAD / F17k.",
        "",
        "| warning | fires when | threshold (guessed before) | clean images flagged | target detected | "
        "milder detected | how chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    missed = []
    for w, r in d["warnings"].items():
        per = r["per_dataset"]
        cmp_ = "<" if r["direction"] == "low" else "≥"
        lines.append(
            f"| {w} | {_QUALITY_MEASURES.get(r['measure'], r['measure'])} {cmp_} threshold | **{r['threshold']:g}** "
            f"({r['previous_threshold']:g}) | {_pcts(per, lambda p: p['clean_flag_rate'])} | {r['target']}: "
            f"{_pcts(per, lambda p, t=r['target']: p['detection'][t])} | {r['milder']}: "
            f"{_pcts(per, lambda p, t=r['milder']: p['detection'][t])} | {r['chosen_by']} |")
        if not r["target_met"]:
            low = [label for k, label in _QUALITY_SETS if per[k]["detection"][r["target"]] < d["min_detection"]]
            missed.append(f"{w} ({r['target']} detected in under {100 * d['min_detection']:.0f}% of {', '.join(low)})")
    lines += ["", "With the guessed thresholds (on the measures as defined now) the same images gave: " + "; ".join(
        f"{w}: clean {_pcts(r['per_dataset'], lambda p: p['clean_flag_rate_at_previous'])}, target "
        f"{_pcts(r['per_dataset'], lambda p, t=r['target']: p['detection_at_previous'][t])}"
        for w, r in d["warnings"].items()) + "."]
    lines += ["", ("Target missed: " + "; ".join(missed) + ". The measure cannot separate these within the "
                   "clean-image budget; the threshold is the budget's limit.") if missed else
              "Every target was met."]
    return "\n".join(lines) + "\n"


#: (JSON file, table name) -> renderer.

# ---------------------------------------------------------------------------------------------- api


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


_TARGET_NAMES = {"throughput_rps": "req/s", "p50_ms": "p50", "p95_ms": "p95", "p99_ms": "p99"}


def api_load(d: dict[str, Any]) -> str:
    """docs/api.md: ``benchmarks/api_benchmark.py``'s Locust runs against ``--serve``."""
    m, t = d["meta"], d["meta"]["targets"]
    lines = [
        f"Measured {m['date']} by `benchmarks/api_benchmark.py` with `{m['model']}` (sha256 {m['model_sha256'][:12]}) "
        f"on {m['cpu_count']} cores (CPU features: {', '.join(m['cpu_features']) or 'none recorded'}), {m['platform']}, "
        f"Python {m['python']}, onnxruntime {m['onnxruntime']}; {m['images']} real images ({m['image_mix']}); "
        f"{m['seconds']:g} s measured per level, closed-loop users with no think time. **The machine was shared "
        f"with other engineers' jobs during the run** (load average {m['load_before'][0]:.1f} before, "
        f"{m['load_after'][0]:.1f} after), and Locust ran on the same cores as the server, so these are lower bounds "
        "for a dedicated machine.",
        "",
        f"| batching | users | req/s | p50 ms | p95 ms | p99 ms | errors | mean ORT batch | targets (> {t['throughput_rps']:g} "
        f"req/s, p50 < {t['p50_ms']:g}, p95 < {t['p95_ms']:g}, p99 < {t['p99_ms']:g} ms) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label in ("on", "off"):
        for lv in d["levels"].get(label, []):
            missed = [_TARGET_NAMES[k] for k, ok in lv["targets_met"].items() if not ok]
            verdict = "all met" if not missed else "missed: " + ", ".join(missed)
            mode = f"on ({m['window_ms']:g} ms)" if label == "on" else "off"
            lines.append(f"| {mode} | {lv['users']} | {lv['throughput_rps']:.1f} | {_ms(lv['p50_ms'])} | "
                         f"{_ms(lv['p95_ms'])} | {_ms(lv['p99_ms'])} | {lv['failures']} "
                         f"({100 * (lv['error_rate'] or 0):.1f}%) | {lv['mean_batch'] or 0:.2f} | {verdict} |")
    on = {lv["users"]: lv for lv in d["levels"].get("on", [])}
    off = {lv["users"]: lv for lv in d["levels"].get("off", [])}
    common = sorted(set(on) & set(off))
    if common:
        lines += ["", "Batching on / off at the same number of users (each level run on both servers back to back):", "",
                  "| users | throughput on/off | p50 on/off | p95 on/off |", "|---:|---:|---:|---:|"]
        lines += [f"| {u} | {on[u]['throughput_rps'] / off[u]['throughput_rps']:.2f}x | "
                  f"{on[u]['p50_ms'] / off[u]['p50_ms']:.2f}x | {on[u]['p95_ms'] / off[u]['p95_ms']:.2f}x |" for u in common]
    all_met = [lv["users"] for lv in d["levels"].get("on", []) if all(lv["targets_met"].values())]
    rps_met = [lv["users"] for lv in d["levels"].get("on", []) if lv["targets_met"]["throughput_rps"]]
    lines += ["", "With batching on (the default), every target was met at "
              + (f"{', '.join(map(str, all_met))} user(s)" if all_met else "no level")
              + "; the throughput target at " + (", ".join(map(str, rps_met)) if rps_met else "no level")
              + " users. The users are closed loops, so latency ≈ users / throughput once the cores are saturated "
              "(Little's law): "
              + ", ".join(f"{lv['users']} users: {1000 * lv['users'] / lv['throughput_rps']:.0f} ms predicted, "
                          f"{lv['mean_ms']:.0f} ms mean measured" for lv in d["levels"].get("on", [])
                          if lv.get("mean_ms") and lv["users"] >= 5)
              + ". Past a few users, more concurrency only adds queueing."]
    if common:
        ratios = [on[u]["throughput_rps"] / off[u]["throughput_rps"] for u in common]
        lines += ["", f"Batching on / off throughput ranged {min(ratios):.2f}x–{max(ratios):.2f}x across the levels: "
                  + ("on this machine batching did not raise throughput; concurrent unbatched requests already keep "
                     "both cores busy, so `--batch-window-ms 0` is the better setting here."
                     if max(ratios) < 1.0 else "batching raised throughput at every level." if min(ratios) >= 1.0
                     else "a mixed result, within the noise of a shared machine.")]
    s = d.get("stress")
    if s:
        lines += ["", f"Stress run: {s['requests']:,} requests with {s['users']} users, batching on: {s['failures']} "
                  f"errors, {s['throughput_rps']:.1f} req/s, p50 {_ms(s['p50_ms'])} ms, p95 {_ms(s['p95_ms'])} ms, p99 "
                  f"{_ms(s['p99_ms'])} ms. Server RSS (psutil, {s['rss_samples']} samples every 0.5 s): "
                  f"{s['rss_start_mb']} MB over the first tenth of the run, {s['rss_end_mb']} MB over the last tenth "
                  f"({s['rss_growth_mb']:+} MB), peak {s['rss_max_mb']} MB."]
    return "\n".join(lines) + "\n"


TABLES: dict[tuple[str, str], Callable[[dict[str, Any]], str]] = {
    ("batch_benchmark.json", "throughput"): batch_throughput,
    ("batch_benchmark.json", "stages"): batch_stages,
    ("gui_benchmark.json", "performance"): gui_performance,
    ("gui_benchmark.json", "stages"): gui_stages,
    ("bundle_size.json", "budgets"): bundle_budgets,
    ("bundle_size.json", "components"): bundle_components,
    ("bundle_size.json", "exclusions"): bundle_exclusions,
    (MODEL_CARD, "limitations"): card_limitations,
    (MODEL_CARD, "calibration"): card_calibration,
    (MODEL_CARD, "gate"): card_gate,
    (MODEL_CARD, "figures"): card_figures,
    ("api.json", "load"): api_load,
    ("domain_check.json", "gate"): domain_gate,
    ("domain_check.json", "selection"): domain_selection,
    ("quality_thresholds.json", "thresholds"): quality_thresholds,
}


def load(name: str, results: Path = RESULTS) -> dict[str, Any]:
    """A benchmark's results; ``model_card.json`` is the bundled model's card."""
    if name == MODEL_CARD:
        cards = sorted((REPO / "resources" / "models").glob("*.json"))
        if len(cards) != 1:
            raise FileNotFoundError(f"expected one model card in resources/models, found {len(cards)}")
        return json.loads(cards[0].read_text(encoding="utf-8"))
    return json.loads((results / name).read_text(encoding="utf-8"))


def render(json_name: str, table: str, results: Path = RESULTS) -> str:
    try:
        fn = TABLES[(json_name, table)]
    except KeyError:
        raise KeyError(f"no generated table {table!r} for {json_name}; known: {sorted(TABLES)}") from None
    return fn(load(json_name, results))


def regenerate(text: str, results: Path = RESULTS) -> str:
    """``text`` with every generated block rendered afresh from the JSON."""
    return BLOCK.sub(lambda m: m["begin"] + render(m["json"], m["table"], results) + m["end"], text)


def stale_blocks(doc: Path, results: Path = RESULTS) -> list[str]:
    """The generated blocks of ``doc`` that differ from their JSON ("json table" names)."""
    text = doc.read_text(encoding="utf-8")
    return [f"{m['json']} {m['table']}" for m in BLOCK.finditer(text)
            if m["body"] != render(m["json"], m["table"], results)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="report the blocks that differ from the JSON; write nothing")
    args = ap.parse_args(argv)
    bad = 0
    for rel in DOCS:
        doc = REPO / rel
        if args.check:
            for name in stale_blocks(doc):
                print(f"{rel}: the {name} table does not match benchmarks/results/{name.split()[0]}")
                bad += 1
            continue
        text = doc.read_text(encoding="utf-8")
        new = regenerate(text)
        if new != text:
            doc.write_text(new, encoding="utf-8")
            print(f"updated {rel}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
