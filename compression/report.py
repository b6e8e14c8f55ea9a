"""The run's report: ``python -m compression report`` (stage ``report`` of ``build``).

Reads only what the other stages wrote into ``runs/<name>/`` and writes

* ``<run>/report/report.json`` (everything gathered, with the file each value came from),
* ``<run>/report/report.md`` (the same as Markdown tables),
* with ``--docs PATH``, a generated document there with PNG plots beside it (AUROC and per-FST gap per
  fine-tuning epoch, drawn with Pillow). ``docs/compression_results.md`` itself is written by
  ``benchmarks/compression_benchmark.py``, which puts the ladder and this report together.

Every number is read from a file of the run; a measurement that is absent prints ``not measured``. The status
line is computed from the gate JSON of the shipped candidate (``quantize/student_int8.onnx``). The report
never touches ``resources/models/``: the ``ship`` stage (:mod:`compression.ship`) does, and only for a passed gate.

Sources, per model:

* students: ``quantize/student_{fp32,fp16,int8,int8_dynamic}.onnx`` (size from the file), ``quantize/quantize.json``
  or, when that is missing (stage killed), the ``quantize.log`` lines (agreement with the FP32 student);
  gate results from ``validate/*.json`` whose ``model`` names that file *and* whose ``sha256`` matches it;
* params/MACs of students without a gate result: ``prune/report.json`` (torch count of the pruned network);
* the FP32 teacher: the ``teacher`` section of a gate JSON, else ``teacher_val_metrics.json``;
* training: ``train/metrics.json``; pruning: ``prune/report.json``; stage wall times: the stages' JSON, else
  the span of their log lines.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mendicant_desktop.core.bundle import sha256_file

NM = "not measured"
FSTS = ("I", "II", "III", "IV", "V", "VI")
VARIANTS = (
    ("fp32", "pruned student FP32", "student_fp32.onnx"),
    ("fp16", "pruned student FP16", "student_fp16.onnx"),
    ("int8", "pruned student INT8 (static QDQ, shipped candidate)", "student_int8.onnx"),
    ("int8_plain", "pruned student INT8 without cross-layer equalization", "student_int8_plain.onnx"),
    ("int8_dynamic", "pruned student INT8-dynamic", "student_int8_dynamic.onnx"),
)
SHIPPED = "student_int8.onnx"
REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS_MD = REPO_ROOT / "docs" / "compression_results.md"
_TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.*)$")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _num(v: Any) -> float | None:
    """A finite number, else None (NaN, None, strings and missing values are 'not measured')."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)) and math.isfinite(v):
        return v
    return None


def _get(d: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(d, dict) and k in d:
            d = d[k]
        else:
            return None
    return d


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _rel(path: Path, run_dir: Path) -> str:
    try:
        return str(path.relative_to(run_dir))
    except ValueError:
        return str(path)


def _log_lines(path: Path) -> list[tuple[dt.datetime, str]]:
    out = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        m = _TS.match(line)
        if m:
            out.append((dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%SZ"), m.group(2)))
    return out


def gate_results(run_dir: Path) -> list[dict[str, Any]]:
    """Every gate JSON under ``validate/`` (files with ``checks`` and ``gate_passed``), newest first."""
    vdir = run_dir / "validate"
    found = []
    for p in sorted(vdir.glob("*.json")) if vdir.is_dir() else []:
        d = _read_json(p)
        if isinstance(d, dict) and "checks" in d and "gate_passed" in d:
            found.append((p.stat().st_mtime, p, d))
    found.sort(key=lambda t: t[0], reverse=True)
    return [{"path": p, "data": d} for _, p, d in found]


def _gate_for(onnx: Path, gates: list[dict[str, Any]], run_dir: Path) -> tuple[dict | None, str | None, str]:
    """The newest gate JSON for this exact file (same name and sha256); (data, source, note)."""
    if not onnx.is_file():
        return None, None, ""
    sha = None
    stale = []
    for g in gates:
        d = g["data"]
        if Path(str(d.get("model", ""))).name != onnx.name:
            continue
        if _bundled(d.get("model")):
            continue
        sha = sha or sha256_file(onnx)
        if d.get("sha256") == sha:
            return d, _rel(g["path"], run_dir), ""
        stale.append(_rel(g["path"], run_dir))
    note = (
        f"gate result(s) {', '.join(stale)} are for an older {onnx.name} (sha256 differs); ignored"
        if stale
        else ""
    )
    return None, None, note


def _bundled(model: Any) -> bool:
    """Whether a gate JSON's model is a bundled one (``resources/models/...``), not a run artifact."""
    parts = Path(str(model or "")).parts
    return any(a == "resources" and b == "models" for a, b in zip(parts, parts[1:]))


def _quantize_info(run_dir: Path) -> tuple[dict[str, dict[str, Any]], str | None, bool]:
    """Per-variant agreement with the FP32 student: quantize.json, else parsed from quantize.log."""
    qjson = _read_json(run_dir / "quantize" / "quantize.json")
    if isinstance(qjson, dict) and isinstance(qjson.get("variants"), dict):
        return {k: dict(v) for k, v in qjson["variants"].items()}, "quantize/quantize.json", True
    out: dict[str, dict[str, Any]] = {}
    pat = re.compile(r"quantize: (\w+): ([\d.]+) MB, top-1 agreement with FP32 ([\d.]+), max\|dp\| ([\d.]+)")
    for _, msg in _log_lines(run_dir / "quantize.log"):
        m = pat.match(msg)
        if m:
            out[m.group(1)] = {"top1_agreement": float(m.group(3)), "max_abs_diff_probs": float(m.group(4))}
    return out, ("quantize.log" if out else None), False


def _metrics_from_gate(sec: dict[str, Any]) -> dict[str, Any]:
    pad = _get(sec, "pad_malignancy") or {}
    groups = pad.get("groups") or {}
    fst = {}
    for g in FSTS:
        r = groups.get(g)
        if isinstance(r, dict):
            fst[g] = {"n": r.get("n"), "n_pos": r.get("n_pos"), "auroc": _num(r.get("auroc")),
                      "sufficient": bool(r.get("sufficient"))}  # fmt: skip
    return {
        "isic_external_auroc": _num(_get(sec, "isic_external_mel_vs_nv", "auroc")),
        "isic_external_n": _get(sec, "isic_external_mel_vs_nv", "n"),
        "pad_auroc": _num(_get(pad, "overall", "auroc")),
        "pad_n": _get(pad, "overall", "n"),
        # validate.py writes the biopsied, FST-labelled PAD subset as pad_malignancy_fst_labelled (an audit
        # group dict); the training-time metrics call the same figure pad_known_auroc (see _metrics_from_train).
        "pad_known_auroc": _num(_get(sec, "pad_malignancy_fst_labelled", "auroc")),
        "overall_auroc": _num(_get(sec, "overall_malignancy", "auroc")),
        "pad_fst": fst,
        "fst_gap": _num(pad.get("auroc_gap")),
        "gap_groups": pad.get("gap_groups"),
    }


def _metrics_from_train(v: dict[str, Any]) -> dict[str, Any]:
    fst = {}
    for g in FSTS:
        r = _get(v, "pad_fst", g)
        if isinstance(r, dict) and r.get("n"):
            fst[g] = {"n": r.get("n"), "n_pos": r.get("n_pos"), "auroc": _num(r.get("auroc")),
                      "sufficient": bool(r.get("sufficient"))}  # fmt: skip
    return {
        "isic_external_auroc": _num(v.get("isic_external_auroc")),
        "isic_external_n": v.get("isic_external_n"),
        "pad_auroc": _num(v.get("pad_auroc")),
        "pad_n": v.get("pad_n"),
        "pad_known_auroc": _num(v.get("pad_known_auroc")),
        "overall_auroc": _num(v.get("malignancy_auroc")),
        "pad_fst": fst,
        "fst_gap": _num(v.get("pad_fst_gap")),
        "gap_groups": None,
    }


def stage_times(run_dir: Path, prune: Any, train: Any, gate: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def span(stage: str) -> tuple[float | None, str]:
        lines = [(t, m) for t, m in _log_lines(run_dir / f"{stage}.log") if "outputs exist" not in m]
        if len(lines) < 2:
            return None, ""
        return (lines[-1][0] - lines[0][0]).total_seconds(), f"{stage}.log (first to last line)"

    data_s = _num(_get(_read_json(run_dir / "data" / "summary.json"), "seconds"))
    rows.append(
        {"stage": "data", "seconds": data_s, "source": "data/summary.json" if data_s is not None else None}
    )
    steps = _get(prune, "steps") or []
    ps = [_num(s.get("seconds_total")) for s in steps if isinstance(s, dict)]
    if ps and all(x is not None for x in ps):
        rows.append(
            {"stage": "prune", "seconds": round(sum(ps), 1), "source": "prune/report.json (sum of steps)"}
        )
    else:
        s, src = span("prune")
        rows.append({"stage": "prune", "seconds": s, "source": src or None})
    ts = _num(_get(train, "wall_seconds"))
    tsrc = "train/metrics.json" if ts is not None else None
    tl = [t for t, _ in _log_lines(run_dir / "train" / "train.log")]
    if len(tl) > 1 and (ts is None or (tl[-1] - tl[0]).total_seconds() > ts):
        # a resumed run: the log spans the feature cache, every epoch and the resumes (metrics.json: the last call)
        ts, tsrc = (tl[-1] - tl[0]).total_seconds(), "train/train.log (first to last line, across resumes)"
    rows.append({"stage": "train", "seconds": ts, "source": tsrc})
    es = _num(_get(_read_json(run_dir / "export" / "export.json"), "seconds"))
    s, src = (es, "export/export.json (its last invocation)") if es is not None else span("export")
    if s is not None:  # the export log spans every invocation (export runs on each build): prefer its own record
        rows.append({"stage": "export", "seconds": s, "source": src})
    q_done = (run_dir / "quantize" / "quantize.json").is_file()
    s, src = span("quantize")
    rows.append({"stage": "quantize", "seconds": s, "source": src or None,
                 "note": "" if q_done or s is None else "stage did not finish (no quantize/quantize.json): "
                                                        "time until its last log line"})  # fmt: skip
    vs = _num(_get(gate, "data", "seconds")) if gate else None
    rows.append({"stage": "validate (shipped candidate)", "seconds": vs,
                 "source": gate["source"] if vs is not None else None})  # fmt: skip
    return rows


def collect(run_dir: str | Path) -> dict[str, Any]:
    """Gather every measured value of the run (with its source file) into one JSON-able dict."""
    run_dir = Path(run_dir)
    prune = _read_json(run_dir / "prune" / "report.json")
    train = _read_json(run_dir / "train" / "metrics.json")
    teacher_val = _read_json(run_dir / "teacher_val_metrics.json")
    gates = gate_results(run_dir)
    qinfo, qsrc, q_done = _quantize_info(run_dir)
    qdir = run_dir / "quantize"
    notes: list[str] = []
    if qdir.is_dir() and not q_done:
        notes.append("quantize/quantize.json is missing (the quantize stage did not finish); agreement figures "
                     "come from quantize.log where it logged them.")  # fmt: skip

    models: list[dict[str, Any]] = []
    shipped_gate = None
    teacher_gate = None
    for key, label, fname in VARIANTS:
        p = qdir / fname
        g, gsrc, gnote = _gate_for(p, gates, run_dir)
        if gnote:
            notes.append(gnote)
        row: dict[str, Any] = {"key": f"student_{key}", "label": label, "file": _rel(p, run_dir) if p.is_file() else None,
                               "sources": {}}  # fmt: skip
        row["size_mb"] = p.stat().st_size / 1e6 if p.is_file() else None
        if row["size_mb"] is not None:
            row["sources"]["size_mb"] = row["file"]
        if g:
            row.update(params=g.get("params"), macs=g.get("macs"), macs_ratio=_num(g.get("macs_ratio")),
                       latency_ratio=_num(_get(g, "latency", "ratio_p50")),
                       latency_p50_ms=_num(_get(g, "latency", "candidate", "p50_ms")),
                       top1_teacher=_num(g.get("top1_agreement")), metrics=_metrics_from_gate(g["candidate"]),
                       gate_passed=bool(g.get("gate_passed")), checks=g.get("checks") or [])  # fmt: skip
            for k in ("params", "macs", "latency_ratio", "metrics", "gate_passed"):
                row["sources"][k] = gsrc
            if teacher_gate is None:
                teacher_gate = {"data": g, "source": gsrc}
        elif p.is_file() and isinstance(prune, dict):
            row.update(params=prune.get("params_after"), macs=prune.get("macs_after"),
                       macs_ratio=_num(prune.get("mac_ratio")))  # fmt: skip
            for k in ("params", "macs"):
                row["sources"][k] = "prune/report.json (torch count)"
        if key != "fp32" and key in qinfo:
            row["top1_fp32"] = _num(qinfo[key].get("top1_agreement"))
            row["sources"]["top1_fp32"] = qsrc
        if fname == SHIPPED and g:
            shipped_gate = {"data": g, "source": gsrc}
        if p.is_file():
            models.append(row)

    # The teacher row: measured in the same gate run as a student where possible.
    t: dict[str, Any] = {"key": "teacher_fp32", "label": "FP32 teacher (reference)", "sources": {}}
    if teacher_gate:
        g, src = teacher_gate["data"], teacher_gate["source"]
        t.update(file=g.get("teacher_model"), size_mb=_num(g.get("teacher_size_mb")), params=g.get("teacher_params"),
                 macs=g.get("teacher_macs"), macs_ratio=1.0, latency_ratio=1.0,
                 latency_p50_ms=_num(_get(g, "latency", "teacher", "p50_ms")),
                 metrics=_metrics_from_gate(g["teacher"]))  # fmt: skip
        for k in ("size_mb", "params", "macs", "latency_ratio", "metrics"):
            t["sources"][k] = src
    else:
        if isinstance(prune, dict):
            t.update(params=prune.get("params_before"), macs=prune.get("macs_before"), macs_ratio=1.0)
            t["sources"].update(params="prune/report.json", macs="prune/report.json")
        if isinstance(teacher_val, dict):
            t["metrics"] = _metrics_from_train(teacher_val)
            t["sources"]["metrics"] = "teacher_val_metrics.json"
    if isinstance(teacher_val, dict) and t.get("metrics") and t["metrics"].get("pad_known_auroc") is None:
        t["metrics"]["pad_known_auroc"] = _num(teacher_val.get("pad_known_auroc"))
        t["sources"]["pad_known_auroc"] = "teacher_val_metrics.json"
    models.insert(0, t)

    # The torch student at its best epoch (training-time validation, before export).
    if isinstance(train, dict) and isinstance(train.get("best_val"), dict) and isinstance(prune, dict):
        models.append({"key": "student_torch_best", "label": f"pruned student, torch, best epoch "
                       f"{train.get('best_epoch')} (training-time val)", "file": "train/student.pt",
                       "params": prune.get("params_after"), "macs": prune.get("macs_after"),
                       "macs_ratio": _num(prune.get("mac_ratio")), "metrics": _metrics_from_train(train["best_val"]),
                       "sources": {"params": "prune/report.json", "macs": "prune/report.json",
                                   "metrics": "train/metrics.json (best_val)"}})  # fmt: skip

    # Other gate results in the run (e.g. the currently bundled model), for comparison.
    others = []
    for g in gates:
        d = g["data"]
        if _bundled(d.get("model")) and not any(
            o["model"] == d.get("model") and o["sha256"] == d.get("sha256") for o in others
        ):
            others.append({"model": d.get("model"), "sha256": d.get("sha256"), "source": _rel(g["path"], run_dir),
                           "size_mb": _num(d.get("size_mb")), "latency_ratio": _num(_get(d, "latency", "ratio_p50")),
                           "metrics": _metrics_from_gate(d["candidate"]), "gate_passed": bool(d.get("gate_passed")),
                           "targets_met": d.get("targets_met"), "targets_total": d.get("targets_total")})  # fmt: skip

    status = status_line(shipped_gate["data"] if shipped_gate else None)
    history = []
    for h in _get(train, "history") or []:
        v = h.get("val") or {}
        history.append({"epoch": h.get("epoch"), "loss": _num(_get(h, "train", "loss")), "seconds": _num(h.get("seconds")),
                        "score": _num(v.get("score")), **_metrics_from_train(v)})  # fmt: skip
    return {
        "run_dir": str(run_dir),
        "generated_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "status": status,
        "gate": None
        if not shipped_gate
        else {
            "source": shipped_gate["source"],
            "model": shipped_gate["data"].get("model"),
            "sha256": shipped_gate["data"].get("sha256"),
            "passed": bool(shipped_gate["data"].get("gate_passed")),
            "checks": shipped_gate["data"].get("checks") or [],
            "targets_met": shipped_gate["data"].get("targets_met"),
            "targets_total": shipped_gate["data"].get("targets_total"),
            "latency": shipped_gate["data"].get("latency"),
            "data": shipped_gate["data"].get("data"),
            "paired": shipped_gate["data"].get("paired"),
        },
        "models": models,
        "other_gate_results": others,
        "prune": None
        if not isinstance(prune, dict)
        else {
            k: prune.get(k)
            for k in (
                "macs_before",
                "macs_after",
                "params_before",
                "params_after",
                "mac_ratio",
                "param_ratio",
                "steps",
                "layers",
                "widths",
            )
        },
        "train": None
        if not isinstance(train, dict)
        else {
            "stop_reason": train.get("stop_reason"),
            "epochs_run": train.get("epochs_run"),
            "best_epoch": train.get("best_epoch"),
            "wall_seconds": train.get("wall_seconds"),
            "freeze_through": train.get("freeze_through"),
            "history": history,
        },
        "stage_times": stage_times(run_dir, prune, train, shipped_gate),
        "notes": notes,
    }


def status_line(gate: dict[str, Any] | None) -> str:
    if not gate:
        return (
            "gate not run on the shipped candidate (no validate/*.json for quantize/student_int8.onnx) — "
            "not measured; the bundled model was not replaced"
        )
    if gate.get("gate_passed"):
        return (
            f"gate passed ({gate.get('targets_met')}/{gate.get('targets_total')} targets met) — the ship stage "
            "installs this candidate as the bundled model"
        )
    missed = []
    for c in gate.get("checks") or []:
        if c.get("kind") == "limit" and c.get("met") is False:
            v = _num(c.get("value"))
            b = _num(c.get("bound"))
            txt = f"{c.get('name')} {_f4(v)} (needs {c.get('op')} {_f4(b)}"
            txt += f"; {c['note']})" if c.get("note") else ")"
            missed.append(txt)
    return (
        f"gate FAILED: {'; '.join(missed) or 'see the checks'} — the bundled model in resources/models/ "
        "was not replaced"
    )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


def _f4(v: Any) -> str:
    v = _num(v)
    return NM if v is None else f"{v:.4f}"


def _fmt(v: Any, spec: str, suffix: str = "") -> str:
    v = _num(v)
    return NM if v is None else f"{format(v, spec)}{suffix}"


def _met(m: Any) -> str:
    return {True: "met", False: "**MISSED**", None: "n/a"}.get(m, str(m))


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _fst_cell(r: dict[str, Any] | None) -> str:
    if not r:
        return NM
    if not r.get("sufficient"):
        return f"withheld (n={r.get('n')}, pos={r.get('n_pos')})"
    return f"{_f4(r.get('auroc'))} (n={r.get('n')})"


def render_markdown(rep: dict[str, Any], *, plots: Sequence[str] = (), generated: bool = False) -> str:
    L: list[str] = []
    if generated:
        L += ["<!-- generated by `python -m compression report`; do not edit -->", "",
              "# Compression results", "",
              "_Generated by `python -m compression report` from the run folder "
              f"`{Path(rep['run_dir']).name}` at {rep['generated_utc']}; do not edit. Every figure is read from "
              "the run's files (named under each table); a value the run did not measure reads "
              f"\"{NM}\"._", ""]  # fmt: skip
    else:
        L += [
            f"# Compression report: run `{Path(rep['run_dir']).name}`",
            "",
            f"Generated {rep['generated_utc']}.",
            "",
        ]
    L += [f"**Status:** {rep['status']}", ""]
    g = rep.get("gate")

    L += ["## Models", ""]
    rows, srcs = [], set()
    for m in rep["models"]:
        me = m.get("metrics") or {}
        gate = "not run" if "gate_passed" not in m else ("passed" if m["gate_passed"] else "**FAILED**")
        if m["key"] == "teacher_fp32":
            gate = "reference"
        rows.append([m["label"], _fmt(m.get("size_mb"), ".2f"),
                     _fmt(_num(m.get("params")) and m["params"] / 1e6, ".2f", " M"),
                     _fmt(_num(m.get("macs")) and m["macs"] / 1e9, ".3f", " G"), _fmt(m.get("macs_ratio"), ".3f"),
                     _fmt(m.get("latency_ratio"), ".3f"), _f4(me.get("isic_external_auroc")),
                     _f4(me.get("pad_auroc")), _f4(me.get("pad_known_auroc")), _f4(me.get("fst_gap")),
                     "—" if m["key"] in ("teacher_fp32", "student_fp32", "student_torch_best")
                     else _fmt(m.get("top1_fp32"), ".4f"), gate])  # fmt: skip
        srcs.update(v for v in m.get("sources", {}).values() if v)
    L += _table(["model", "size (MB)", "params", "MACs", "MACs / teacher", "latency / teacher (p50)",
                 "ISIC ext. mel-vs-nv AUROC", "PAD malignancy AUROC", "PAD FST-labelled AUROC", "per-FST gap",
                 "top-1 vs FP32 student", "gate"], rows)  # fmt: skip
    L += ["", f"Sources: {', '.join(sorted(srcs)) or 'none'}. Latency ratios are p50 at batch 1 against the FP32 "
          "teacher in the same validate run; sizes are the ONNX files' sizes. Params/MACs of students without a "
          "gate result are the torch counts of the pruned network (`prune/report.json`); the gate counts them "
          "on the ONNX graph.", ""]  # fmt: skip

    L += ["## Per-FST AUROC (PAD malignancy, clinician-labelled FST)", ""]
    rows = []
    for m in rep["models"]:
        me = m.get("metrics")
        if not me:
            continue
        fst = me.get("pad_fst") or {}
        rows.append([m["label"], *[_fst_cell(fst.get(k)) for k in FSTS[:4]], _f4(me.get("fst_gap")),
                     ", ".join(me.get("gap_groups") or []) or "—"])  # fmt: skip
    L += _table(["model", "FST I", "FST II", "FST III", "FST IV", "gap", "gap between"], rows)
    L += ["", "Groups with too few cases to judge (the gate's rule) are withheld, as the gate withholds them. "
          "No FST V–VI case is in the validation split.", ""]  # fmt: skip

    L += ["## Gate and targets (shipped candidate)", ""]
    if g:
        L += [
            f"Model `{g['model']}` (sha256 `{str(g['sha256'])[:12]}`), from `{g['source']}`; targets met: "
            f"{g.get('targets_met')}/{g.get('targets_total')}.",
            "",
        ]
        rows = [[c.get("kind"), c.get("name"), _f4(c.get("value")), f"{c.get('op')} {_f4(c.get('bound'))}",
                 _met(c.get("met")), c.get("note") or ""] for c in g["checks"]]  # fmt: skip
        L += _table(["kind", "check", "value", "bound", "result", "note"], rows) + [""]
        pr = g.get("paired")
        if pr:
            L += [f"Can this split resolve the limits? Candidate minus teacher with a paired stratified bootstrap "
                  f"95% CI ({pr.get('n_boot')} resamples, both models scored on the same resampled images). "
                  "Informational: the gate compares the point estimates.", ""]  # fmt: skip
            verdict = {"met": "CI within the limit", "missed": "CI beyond the limit",
                       None: "CI straddles the limit (unresolved)"}  # fmt: skip
            rows = []
            for key, label in (("isic_external_auroc_diff", "ISIC external AUROC"), ("pad_auroc_diff", "PAD AUROC"),
                               ("pad_fst_labelled_auroc_diff", "PAD AUROC, FST-labelled (not gated)"),
                               ("auroc_gap_diff", "per-FST AUROC gap")):  # fmt: skip
                d = pr.get(key) or {}
                if not d:
                    continue
                ci = d.get("ci95") or [None, None]
                rows.append([label, _fmt(d.get("value"), "+.4f"), f"[{_fmt(ci[0], '+.3f')}, {_fmt(ci[1], '+.3f')}]",
                             f"{d.get('op')} {_fmt(d.get('limit'), '+.3f')}", verdict.get(d.get("resolved"), "—")])  # fmt: skip
            L += _table(["difference", "value", "95% CI", "limit", "reading"], rows) + [""]
    else:
        L += [f"Gate: {NM}.", ""]
    if rep.get("other_gate_results"):
        L += ["Other gate results in this run:", ""]
        rows = [[f"`{o['model']}`", _fmt(o["size_mb"], ".2f"), _fmt(o["latency_ratio"], ".3f"),
                 _f4(o["metrics"]["isic_external_auroc"]), _f4(o["metrics"]["pad_auroc"]), _f4(o["metrics"]["fst_gap"]),
                 "passed" if o["gate_passed"] else "**FAILED**", f"{o['targets_met']}/{o['targets_total']}",
                 o["source"]] for o in rep["other_gate_results"]]  # fmt: skip
        L += _table(["model", "size (MB)", "latency / teacher", "ISIC ext. AUROC", "PAD AUROC", "per-FST gap",
                     "gate", "targets met", "source"], rows) + [""]  # fmt: skip

    tr = rep.get("train")
    L += ["## Fine-tuning (validation metrics per epoch)", ""]
    if tr:
        L += [f"Stop reason: `{tr.get('stop_reason')}`; epochs run: {tr.get('epochs_run')}; best epoch: "
              f"{tr.get('best_epoch')}; wall time: {_fmt(tr.get('wall_seconds'), '.0f', ' s')}; frozen through: "
              f"`{tr.get('freeze_through')}`. Source: `train/metrics.json` (epoch 0 = pruned, before "
              "fine-tuning; torch model).", ""]  # fmt: skip
        rows = [[h["epoch"], _f4(h["loss"]), _f4(h["isic_external_auroc"]), _f4(h["pad_auroc"]),
                 _f4(h["pad_known_auroc"]), *[_f4(_get(h, "pad_fst", k, "auroc")) for k in FSTS[:4]],
                 _f4(h["fst_gap"]), _f4(h["score"]), _fmt(h["seconds"], ".1f")] for h in tr["history"]]  # fmt: skip
        L += _table(["epoch", "train loss", "ISIC ext.", "PAD", "PAD FST-labelled", "FST I", "FST II", "FST III",
                     "FST IV", "gap", "score", "s"], rows) + [""]  # fmt: skip
        if tr["history"]:
            L += [
                f"Per-epoch FST AUROCs are printed even for groups too small to judge (FST I n={_n_of(tr, 'I')}, "
                f"FST IV n={_n_of(tr, 'IV')}); the gate withholds those.",
                "",
            ]
        for p in plots:
            L += [f"![{Path(p).stem}]({p})", ""]
    else:
        L += [f"Training: {NM}.", ""]

    pr = rep.get("prune")
    L += ["## Structured pruning", ""]
    if pr:
        L += [f"MACs {_fmt(_num(pr['macs_before']) and pr['macs_before'] / 1e9, '.3f', ' G')} → "
              f"{_fmt(_num(pr['macs_after']) and pr['macs_after'] / 1e9, '.3f', ' G')} (ratio {_fmt(pr['mac_ratio'], '.3f')}); "
              f"params {_fmt(_num(pr['params_before']) and pr['params_before'] / 1e6, '.2f', ' M')} → "
              f"{_fmt(_num(pr['params_after']) and pr['params_after'] / 1e6, '.2f', ' M')} (ratio {_fmt(pr['param_ratio'], '.3f')}). "
              "Source: `prune/report.json`.", ""]  # fmt: skip
        rows = [[s.get("step"), s.get("removed_channels"), s.get("groups_touched"), _fmt(s.get("mac_ratio"), ".3f"),
                 _fmt(_num(s.get("params")) and s["params"] / 1e6, ".2f", " M"), _fmt(s.get("seconds_total"), ".1f")]
                for s in pr.get("steps") or []]  # fmt: skip
        L += _table(["step", "channels removed", "groups", "MACs / teacher", "params", "s"], rows) + [""]
        L += ["Per-layer sparsity (fraction of output / input channels removed):", ""]
        rows = []
        for name, r in (pr.get("layers") or {}).items():
            o, i = r.get("out") or [None, None], r.get("in") or [None, None]
            rows.append(
                [
                    f"`{name}`",
                    f"{i[0]} → {i[1]}",
                    f"{o[0]} → {o[1]}",
                    _fmt(r.get("in_sparsity"), ".3f"),
                    _fmt(r.get("out_sparsity"), ".3f"),
                    _fmt(_num(r.get("macs")) and r["macs"] / 1e6, ".2f", " M"),
                ]
            )
        L += _table(
            ["layer", "in channels", "out channels", "in sparsity", "out sparsity", "MACs after"], rows
        ) + [""]
    else:
        L += [f"Pruning: {NM}.", ""]

    L += ["## Stage wall times", ""]
    rows = [[r["stage"], _fmt(r.get("seconds"), ".0f", " s"), f"`{r['source']}`" if r.get("source") else "—",
             r.get("note") or ""] for r in rep["stage_times"]]  # fmt: skip
    L += _table(["stage", "wall time", "source", "note"], rows) + [""]
    if rep.get("notes"):
        L += ["## Notes", ""] + [f"- {n}" for n in rep["notes"]] + [""]
    return "\n".join(L)


def _n_of(tr: dict[str, Any], g: str) -> Any:
    for h in tr.get("history") or []:
        r = _get(h, "pad_fst", g)
        if r:
            return r.get("n")
    return NM


# --------------------------------------------------------------------------------------------------
# Plots (Pillow)
# --------------------------------------------------------------------------------------------------


def line_plot(path: Path, title: str, series: dict[str, list[tuple[float, float | None]]], *,
              ylabel: str = "", xlabel: str = "epoch", size: tuple[int, int] = (640, 400)) -> Path | None:  # fmt: skip
    """A small line chart drawn with Pillow; None where Pillow is missing or there is nothing to draw."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return None
    pts = [(x, y) for s in series.values() for x, y in s if y is not None]
    if not pts:
        return None
    W, H = size
    ml, mr, mt, mb = 60, 150, 36, 40
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.05 or 0.05
    y0, y1 = y0 - pad, y1 + pad
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)

    def X(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * (W - ml - mr)

    def Y(y: float) -> float:
        return H - mb - (y - y0) / (y1 - y0) * (H - mt - mb)

    d.rectangle([ml, mt, W - mr, H - mb], outline="black")
    for i in range(6):
        yv = y0 + (y1 - y0) * i / 5
        d.line([ml - 4, Y(yv), W - mr, Y(yv)], fill=(225, 225, 225))
        d.text((4, Y(yv) - 6), f"{yv:.3f}", fill="black")
    ticks = sorted(set(xs))
    if len(ticks) > 8:  # continuous x (e.g. size in MB): six even ticks instead of every value
        ticks = [x0 + (x1 - x0) * i / 5 for i in range(6)]
    for xv in ticks:
        d.text((X(xv) - 4, H - mb + 6), f"{xv:.3g}", fill="black")
    d.text((ml, 10), title, fill="black")
    d.text((W // 2 - 20, H - 16), xlabel, fill="black")
    if ylabel:
        d.text((ml, mt - 14), ylabel, fill=(90, 90, 90))
    colours = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]
    for k, (name, s) in enumerate(series.items()):
        c = colours[k % len(colours)]
        seg = [(X(x), Y(y)) for x, y in s if y is not None]
        if len(seg) > 1:
            d.line(seg, fill=c, width=2)
        for px, py in seg:
            d.ellipse([px - 2, py - 2, px + 2, py + 2], fill=c)
        d.line([W - mr + 10, mt + 10 + 16 * k, W - mr + 30, mt + 10 + 16 * k], fill=c, width=2)
        d.text((W - mr + 34, mt + 4 + 16 * k), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def draw_plots(rep: dict[str, Any], out_dir: Path) -> list[Path]:
    tr = rep.get("train")
    if not tr or not tr.get("history"):
        return []
    h = tr["history"]
    made = []
    p = line_plot(out_dir / "auroc_per_epoch.png", "Validation AUROC per fine-tuning epoch (train/metrics.json)", {
        "ISIC ext. mel-vs-nv": [(e["epoch"], e["isic_external_auroc"]) for e in h],
        "PAD malignancy": [(e["epoch"], e["pad_auroc"]) for e in h],
        "PAD FST-labelled": [(e["epoch"], e["pad_known_auroc"]) for e in h]}, ylabel="AUROC")  # fmt: skip
    made += [p] if p else []
    p = line_plot(out_dir / "fst_gap_per_epoch.png", "Per-FST AUROC gap per fine-tuning epoch (train/metrics.json)",
                  {"per-FST gap": [(e["epoch"], e["fst_gap"]) for e in h]}, ylabel="AUROC gap")  # fmt: skip
    made += [p] if p else []
    return made


# --------------------------------------------------------------------------------------------------
# Stage
# --------------------------------------------------------------------------------------------------


def write_report(run_dir: str | Path, *, docs: Path | None = None, log: Callable[[str], None] = print
                 ) -> dict[str, Any]:  # fmt: skip
    run_dir = Path(run_dir)
    rep = collect(run_dir)
    out = run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "report.md").write_text(render_markdown(rep) + "\n", encoding="utf-8")
    log(f"report: wrote {out / 'report.json'} and {out / 'report.md'}")
    if docs is not None:
        docs = Path(docs)
        pdir = docs.with_suffix("")
        plots = draw_plots(rep, pdir)
        rel = [f"{pdir.name}/{p.name}" for p in plots]
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(render_markdown(rep, plots=rel, generated=True) + "\n", encoding="utf-8")
        log(f"report: wrote {docs}" + (f" and {len(plots)} plot(s) in {pdir}" if plots else ""))
    log(f"report: {rep['status']}")
    return rep


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compression report", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", default=None, help="run folder (default: the config's run folder)")
    p.add_argument("--docs", default="", help="also write a generated results document here (e.g. "
                   f"{DOCS_MD.relative_to(REPO_ROOT)}; benchmarks/compression_benchmark.py writes that one with the "
                   "ladder and this report)")  # fmt: skip
    return p


def run_stage(cfg: Any, run_dir: str | Path, *, log: Callable[[str], None] = print,
              argv: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    a = _parser().parse_args(list(argv or []))
    return write_report(a.run_dir or run_dir, docs=Path(a.docs) if a.docs else None, log=log)


def main(argv: Sequence[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    run_dir = a.run_dir
    if run_dir is None:
        from .config import load_config

        run_dir = load_config(None).run_dir()
    if not Path(run_dir).is_dir():
        print(f"error: run folder {run_dir} does not exist", file=sys.stderr)
        return 2
    write_report(run_dir, docs=Path(a.docs) if a.docs else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
