"""Compression ladder: the FP32 teacher and pruned students at several MAC reductions, each as FP32, FP16 and INT8.

    python benchmarks/compression_benchmark.py [--reductions 0.30,0.50,0.60,0.70] [--measure-only] [--rounds 30]

For every reduction R (share of the teacher's MACs removed) the committed ``compression/config.toml`` is run with
``prune.target_ratio = 1 - R`` through ``data, prune, train, export, quantize`` (``python -m compression build
--stages ...``) into ``runs/ladder-<R%>/``; the rung whose ratio equals the config's is the committed build's own
run folder, so the shipped student is measured as it is. Each rung reuses the base run's decoded data when its
data configuration is identical (symlink; never a copy of 2 GB). Every stage skips when its outputs exist and were
made with the same configuration (``compression.fingerprint``) and training resumes from its last checkpoint, so
the hours-long ladder can be stopped and re-run: it picks up where it stopped. A rung that fails to build is
reported as such and the others still run.

Then, in one process and one run, side by side:

* size (MB), parameters and MACs (from the ONNX graph, ``compression.validate.count_macs_params``);
* latency at batch 1 with 2 threads: every model once per round in a rotating order, ``--rounds`` rounds; p50,
  p95 and p99 in ms and each relative to the teacher's p50/p95/p99 measured in the same rounds;
* peak RSS (MB): a fresh subprocess per model that creates the ORT session and runs 5 inferences
  (includes the Python + ONNX Runtime baseline, printed separately);
* on the validation split (never the ham10000 pool): ISIC external melanoma-vs-nevus AUROC, PAD malignancy AUROC,
  per-FST PAD AUROC (clinician FST, groups with n >= 30 and >= 5 of each class) and the per-FST gap
  (``compression.validate.evaluate``).

Writes ``benchmarks/results/compression_benchmark.json`` and ``docs/compression_results.md`` (generated, never
edited by hand) with PNG plots in ``docs/compression_results/``: AUROC vs MAC reduction, gap vs MAC reduction,
latency vs size. The shipped build's own report (``compression.report``) is appended to the same document.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compression.config import Config, load_config  # noqa: E402
from compression.fingerprint import check_stage  # noqa: E402
from compression.report import collect, draw_plots, line_plot, render_markdown  # noqa: E402
from compression.validate import (  # noqa: E402
    cached_probs,
    count_macs_params,
    default_teacher,
    eval_set,
    evaluate,
    gate_limits,
    ort_session,
    paired_differences,
)

DOCS = REPO / "docs" / "compression_results.md"
PLOTS = REPO / "docs" / "compression_results"
RESULTS = REPO / "benchmarks" / "results" / "compression_benchmark.json"
VARIANTS = (
    ("FP32", "student_fp32.onnx"),
    ("FP16", "student_fp16.onnx"),
    ("INT8", "student_int8.onnx"),
    ("INT8-noCLE", "student_int8_plain.onnx"),  # the same INT8 without cross-layer equalization
)
STAGES = "data,prune,train,export,quantize"
FSTS = ("I", "II", "III", "IV", "V", "VI")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def rung_name(cfg: Config, reduction: float) -> str:
    if abs((1.0 - reduction) - cfg.prune.target_ratio) < 1e-9:
        return cfg.run.name
    return f"ladder-{round(reduction * 100):d}"


def rung_config(reduction: float, name: str) -> Config:
    return load_config(None, {"prune.target_ratio": round(1.0 - reduction, 6), "run.name": name})


def share_data(base: Path, rung: Path, cfg: Config) -> None:
    """Symlink the base run's decoded data and manifests into a new rung when the data config is identical."""
    if (rung / "data").exists() or not (base / "data" / "DONE").is_file() or base == rung:
        return
    try:
        if check_stage(cfg, base, "data") != "match":
            return
    except Exception:  # noqa: BLE001 - a different data config: the rung decodes its own
        return
    rung.mkdir(parents=True, exist_ok=True)
    for d in ("data", "manifests"):
        if (base / d).exists() and not (rung / d).exists():
            os.symlink(os.path.relpath(base / d, rung), rung / d)
    log(f"{rung.name}: sharing decoded data with {base.name}")


def build_rung(reduction: float, base_cfg: Config) -> dict[str, Any]:
    name = rung_name(base_cfg, reduction)
    cfg = rung_config(reduction, name)
    run = cfg.run_dir()
    share_data(base_cfg.run_dir(), run, cfg)
    run.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "compression", "build", "--stages", STAGES, "--name", name,
           "--set", f"prune.target_ratio={round(1.0 - reduction, 6)}"]  # fmt: skip
    log(f"{name}: {' '.join(cmd[1:])} (log: {run / 'ladder_build.log'})")
    t0 = time.time()
    with open(run / "ladder_build.log", "a", encoding="utf-8") as fh:
        rc = subprocess.call(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT)
    log(f"{name}: build exit {rc} after {time.time() - t0:.0f}s")
    return {"name": name, "run_dir": str(run), "exit": rc, "seconds_this_call": round(time.time() - t0, 1)}


def stage_seconds(run: Path) -> dict[str, float | None]:
    """Wall seconds per stage, read the way the build's report reads them (``compression.report.stage_times``:
    the stages' own JSON, a resumed train stage's log span, other stages' log spans). A rung whose decoded data
    is a symlink to another run's reports no data time of its own."""
    from compression.report import _read_json, stage_times

    rows = stage_times(run, _read_json(run / "prune" / "report.json"), _read_json(run / "train" / "metrics.json"),
                       None)  # fmt: skip
    out = {
        r["stage"]: r["seconds"]
        for r in rows
        if r["stage"] in ("data", "prune", "train", "export", "quantize")
    }
    if (run / "data").is_symlink():
        out["data"] = None
    log_text = (run / "train" / "train.log").read_text(encoding="utf-8") if (run / "train" / "train.log").is_file() else ""
    out["train_cache"] = "built" if "cache[train]: building" in log_text else "reused"
    return out


def peak_rss_mb(model: Path | None, threads: int) -> float:
    """Peak RSS of a fresh process that loads ``model`` and runs 5 inferences (None: the runtime alone)."""
    code = (
        "import numpy as np, onnxruntime as ort, sys\n"
        "p = sys.argv[1]\n"
        "if p:\n"
        "    so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[2])\n"
        "    s = ort.InferenceSession(p, so, providers=['CPUExecutionProvider'])\n"
        "    x = np.random.default_rng(0).uniform(0, 255, (1, 254, 254, 3)).astype(np.float32)\n"
        "    m = np.zeros((1, 10), np.float32); m[0, 2] = 1; m[0, 7] = 1; m[0, 8] = 51.9 / 90; m[0, 9] = 1\n"
        "    for _ in range(5): s.run(None, {'image': x, 'meta': m})\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report this (large) parent's peak
        "print([int(x.split()[1]) for x in open('/proc/self/status') if x.startswith('VmHWM')][0] / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(model or ""), str(threads)], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def latencies(
    models: dict[str, Path], es: Any, threads: int, rounds: int, warmup: int = 3
) -> dict[str, list[float]]:
    x = np.ascontiguousarray(np.asarray(es.images[0], np.float32)[None])
    m = np.ascontiguousarray(np.asarray(es.meta[0], np.float32)[None])
    feeds = {"image": x, "meta": m}
    sessions = {k: ort_session(p, threads) for k, p in models.items()}
    for s in sessions.values():
        for _ in range(warmup):
            s.run(None, feeds)
    keys = list(sessions)
    times: dict[str, list[float]] = {k: [] for k in keys}
    for r in range(rounds):
        order = keys[r % len(keys) :] + keys[: r % len(keys)]  # rotate: no model always runs first
        for k in order:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def fst_block(ev: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    pad = ev.get("pad_malignancy") or {}
    groups = {}
    for g in FSTS:
        d = (pad.get("groups") or {}).get(g)
        if d:
            groups[g] = {
                "n": d.get("n"),
                "auroc": d.get("auroc"),
                "sufficient": g in (pad.get("gap_groups") or []),
            }
    return groups, pad.get("auroc_gap")


def case_mix_check(probs: np.ndarray, records: list[Any]) -> dict[str, Any]:
    """PAD AUROC per clinician FST with the negatives restricted to actinic keratoses (ACK).

    The per-FST gap compares groups with different benign case mixes (FST III's benign PAD lesions include
    nevi, which are easy; FST II's are mostly ACK, the hardest benign look-alike of SCC and BCC). Holding the
    negatives to one diagnosis separates case mix from skin type; diagnostic only, not part of the gate."""
    from mendicant_desktop.core.audit import auroc
    from mendicant_desktop.core.results import MALIGNANT_INDICES

    mal = np.clip(probs[:, list(MALIGNANT_INDICES)].sum(axis=1), 0, 1)
    out = {}
    for g in ("II", "III"):
        k = [i for i, r in enumerate(records) if r.dataset == "pad" and r.fst_source == "label" and r.fst == g
             and (r.malignant == 1 or r.dx == "ACK")]  # fmt: skip
        y = np.array([records[i].malignant for i in k], np.int64)
        out[g] = {"n_pos": int(y.sum()), "n_ack": int(len(y) - y.sum()),
                  "auroc": float(auroc(y, mal[k])) if len(k) and 0 < y.sum() < len(y) else None}  # fmt: skip
    a, b = out["II"]["auroc"], out["III"]["auroc"]
    out["gap"] = abs(a - b) if a is not None and b is not None else None
    return out


def measure(entries: list[dict[str, Any]], cfg: Config, threads: int, rounds: int) -> dict[str, Any]:
    es = eval_set(cfg, "val", log=log)
    teacher = default_teacher()
    models: dict[str, Path] = {"teacher FP32": teacher}
    for e in entries:
        for fmt, fname in VARIANTS:
            p = Path(e["run_dir"]) / "quantize" / fname
            if p.is_file():
                models[f"{e['label']} {fmt}"] = p
    log(f"measuring {len(models)} models on {len(es.records)} validation images ({es.source})")
    rows: dict[str, dict[str, Any]] = {}
    gate, _ = gate_limits(cfg)
    p_teacher = cached_probs(teacher, es, threads=threads, log=log)
    for k, p in models.items():
        probs = cached_probs(p, es, threads=threads, log=log)
        ev = evaluate(probs, es.records, n_boot=200, seed=cfg.run.seed)
        paired = paired_differences(probs, p_teacher, es.records, gate, n_boot=1000, seed=cfg.run.seed)
        groups, gap = fst_block(ev)
        mp = count_macs_params(p)
        rows[k] = {
            "file": str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p),
            "size_mb": p.stat().st_size / 1e6, "params": mp["params"], "macs": mp["macs"],
            "isic_external_auroc": (ev.get("isic_external_mel_vs_nv") or {}).get("auroc"),
            "pad_auroc": ((ev.get("pad_malignancy") or {}).get("overall") or {}).get("auroc"),
            "pad_fst": groups, "pad_fst_gap": gap, "case_mix": case_mix_check(probs, es.records),
            "paired": paired,
        }  # fmt: skip
    log(f"latency: {rounds} rotating rounds, batch 1, {threads} threads")
    times = latencies(models, es, threads, rounds)
    t = times["teacher FP32"]
    tq = {q: float(np.percentile(t, q)) for q in (50, 95, 99)}
    for k, v in times.items():
        r = rows[k]
        for q in (50, 95, 99):
            r[f"p{q}_ms"] = float(np.percentile(v, q))
            r[f"p{q}_ratio"] = r[f"p{q}_ms"] / tq[q]
    base_rss = peak_rss_mb(None, threads)
    for k, p in models.items():
        rows[k]["peak_rss_mb"] = peak_rss_mb(p, threads)
    t0 = rows["teacher FP32"]
    for r in rows.values():
        r["macs_ratio"] = r["macs"] / t0["macs"]
        r["params_ratio"] = r["params"] / t0["params"]
    return {"rows": rows, "runtime_baseline_rss_mb": base_rss, "validation": es.source.replace(str(REPO) + os.sep, ""), "n_val": len(es.records),
            "threads": threads, "rounds": rounds}  # fmt: skip


def _f(v: Any, spec: str = ".3f") -> str:
    return "not measured" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def render(res: dict[str, Any], plots: list[str], build_md: str | None) -> str:
    rows = res["rows"]
    L = ["<!-- generated by benchmarks/compression_benchmark.py; do not edit -->", "",
         "# Compression results", "",
         f"_Generated by `python benchmarks/compression_benchmark.py` on {res['generated_utc']}; do not edit. Every "
         "figure below was measured by that script in one run on this machine; a model that was not built reads "
         "\"not measured\"._", "",
         "## The ladder", "",
         f"Validation split: {res['n_val']} images ({res['validation']}); never the ham10000 pool. Latency: batch "
         f"1, {res['threads']} ONNX Runtime threads, {res['rounds']} rounds with every model once per round in a "
         "rotating order; ratios are to the FP32 teacher's percentile in the same rounds. Peak RSS: a fresh "
         "process that loads the model and runs 5 inferences; the Python + ONNX Runtime baseline alone is "
         f"{res['runtime_baseline_rss_mb']:.0f} MB. Per-FST AUROC: PAD clinician FST, groups with n >= 30 and at "
         "least 5 of each class count for the gap.", ""]  # fmt: skip
    head = [
        "model",
        "MAC reduction",
        "size MB",
        "params M",
        "MACs G (ratio)",
        "p50 ms (ratio)",
        "p95 ratio",
        "p99 ratio",
        "peak RSS MB",
        "ISIC ext mel-vs-nv",
        "PAD malignancy",
        "FST II",
        "FST III",
        "per-FST gap",
    ]
    L += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, r in rows.items():
        fst = r["pad_fst"]
        L.append("| " + " | ".join([
            k, _f(r.get("reduction"), ".0%") if r.get("reduction") is not None else "0%", _f(r["size_mb"], ".2f"),
            _f(r["params"] / 1e6, ".2f"), f"{r['macs'] / 1e9:.2f} ({r['macs_ratio']:.3f})",
            f"{r['p50_ms']:.1f} ({r['p50_ratio']:.3f})", _f(r["p95_ratio"]), _f(r["p99_ratio"]),
            _f(r["peak_rss_mb"], ".0f"), _f(r["isic_external_auroc"]), _f(r["pad_auroc"]),
            _f((fst.get("II") or {}).get("auroc")), _f((fst.get("III") or {}).get("auroc")), _f(r["pad_fst_gap"]),
        ]) + " |")  # fmt: skip
    L += [
        "",
        "Per-FST PAD AUROC (n) of every model:",
        "",
        "| model | " + " | ".join(FSTS) + " |",
        "|---|" + "---|" * len(FSTS),
    ]
    for k, r in rows.items():
        cells = []
        for g in FSTS:
            d = r["pad_fst"].get(g)
            cells.append("–" if not d else f"{_f(d.get('auroc'))} (n={d.get('n')})" + ("" if d.get("sufficient")
                                                                                       else " *"))  # fmt: skip
        L.append(f"| {k} | " + " | ".join(cells) + " |")
    L += [
        "",
        "\\* too few images or too few of one class to count for the gap.",
        "",
        "Case-mix check (diagnostic, not the gate): PAD AUROC within FST II and III with the negatives restricted "
        "to actinic keratoses (ACK), the benign diagnosis both groups share. FST III's benign lesions include easy "
        "nevi, FST II's are mostly ACK, so part of the per-FST gap is case mix rather than skin type.",
        "",
        "| model | FST II: malignant vs ACK | FST III: malignant vs ACK | gap |",
        "|---|---|---|---|",
    ]
    for k, r in rows.items():
        cm = r.get("case_mix") or {}
        cells = [f"{_f(cm[g]['auroc'])} ({cm[g]['n_pos']} vs {cm[g]['n_ack']})" if g in cm else "–"
                 for g in ("II", "III")]  # fmt: skip
        L.append(f"| {k} | {cells[0]} | {cells[1]} | {_f(cm.get('gap'))} |")
    L += [
        "",
        "Can the validation split resolve the gate's limits? Each model minus the FP32 teacher, with a paired "
        "stratified bootstrap 95% CI (1000 resamples; both models scored on the same resampled images; "
        "`compression.validate.paired_differences`). The gate compares point estimates; where the CI straddles "
        "the limit, that comparison is decided by which images happen to be in the split. \"PAD FST-labelled\" leaves "
        "out the PAD images without a clinician FST (all unbiopsied, benign and without metadata, which a model can "
        "tell apart by the missing metadata alone).",
        "",
        "| model | ISIC ext Δ [95% CI] | PAD Δ [95% CI] | PAD FST-labelled Δ [95% CI] (not gated) | per-FST gap Δ [95% CI] (limit <= +0.005) | gap limit |",
        "|---|---|---|---|---|---|",
    ]
    reading = {"met": "met, resolved", "missed": "missed, resolved", None: "unresolved"}
    for k, r in rows.items():
        pr = r.get("paired")
        if not pr or k == "teacher FP32":
            continue

        def cell(key: str, pr: dict[str, Any] = pr) -> str:
            d = pr.get(key) or {}
            lo, hi = d.get("ci95") or (None, None)
            return f"{_f(d.get('value'), '+.3f')} [{_f(lo, '+.3f')}, {_f(hi, '+.3f')}]"

        L.append(f"| {k} | {cell('isic_external_auroc_diff')} | {cell('pad_auroc_diff')} | "
                 f"{cell('pad_fst_labelled_auroc_diff')} | {cell('auroc_gap_diff')} | "
                 f"{reading.get((pr.get('auroc_gap_diff') or {}).get('resolved'), '–')} |")  # fmt: skip
    L += [
        "",
        "## Wall time per rung",
        "",
        "| rung | run folder | build status | data s | prune s | train s | train feature cache | export s | quantize s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in res["rungs"]:
        s = e.get("stage_seconds") or {}
        L.append(f"| {e['label']} | `runs/{Path(e['run_dir']).name}` | {e.get('status')} | "
                 + " | ".join(_f(s.get(k), ".0f") for k in ("data", "prune", "train"))
                 + f" | {s.get('train_cache', '–')} | "
                 + " | ".join(_f(s.get(k), ".0f") for k in ("export", "quantize")) + " |")  # fmt: skip
    L += ["", "Stage times as each rung's stages logged them (several jobs shared the 2 cores, so they are upper "
          "bounds); \"not measured\" for data means the rung shares another run's decoded data (a symlink). "
          "Train includes building the frozen-prefix feature cache only where the cache column says \"built\"; "
          "a train stage re-run on a cache it reused (the cache depends only on the pruned model) shows the "
          "epochs alone. Export: its last invocation (the export and its ORT-vs-torch check).", "",
          f"Benchmark wall time (this invocation, measuring only): {res['seconds']:.0f} s.", ""]  # fmt: skip
    if plots:
        L += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    if build_md:
        L += ["---", "", build_md]
    return "\n".join(L) + "\n"


def draw(res: dict[str, Any]) -> list[str]:
    rows = res["rows"]
    made = []

    def series(metric: str) -> dict[str, list[tuple[float, float | None]]]:
        out: dict[str, list[tuple[float, float | None]]] = {}
        for fmt, _ in VARIANTS:
            pts = [(0.0, rows["teacher FP32"][metric])]
            pts += [(r["reduction"] * 100, r[metric]) for r in rows.values() if r.get("format") == fmt]
            out[fmt] = sorted(pts)
        return out

    for metric, title, fname, ylabel in (
        ("isic_external_auroc", "ISIC external melanoma-vs-nevus AUROC vs MAC reduction (0 % = the FP32 teacher)", "auroc_isic_vs_sparsity",
         "AUROC"),
        ("pad_auroc", "PAD malignancy AUROC vs MAC reduction (0 % = the FP32 teacher)", "auroc_pad_vs_sparsity", "AUROC"),
        ("pad_fst_gap", "Per-FST PAD AUROC gap vs MAC reduction (0 % = the FP32 teacher)", "gap_vs_sparsity", "AUROC gap"),
    ):  # fmt: skip
        p = line_plot(
            PLOTS / f"{fname}.png", title, series(metric), ylabel=ylabel, xlabel="MAC reduction (%)"
        )
        made += [p] if p else []
    lat: dict[str, list[tuple[float, float | None]]] = {}
    for fmt, _ in VARIANTS:
        lat[fmt] = sorted((r["size_mb"], r["p50_ratio"]) for r in rows.values() if r.get("format") == fmt)
    lat["teacher FP32"] = [(rows["teacher FP32"]["size_mb"], 1.0)]
    p = line_plot(PLOTS / "latency_vs_size.png", "p50 latency (ratio to teacher) vs model size", lat,
                  ylabel="latency / teacher", xlabel="size (MB)")  # fmt: skip
    made += [p] if p else []
    return [f"{PLOTS.name}/{Path(m).name}" for m in made]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reductions", default="0.30,0.50,0.60,0.70", help="MAC reductions (share removed)")
    ap.add_argument(
        "--measure-only", action="store_true", help="do not build missing rungs; measure what exists"
    )
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--docs", default=str(DOCS))
    a = ap.parse_args(argv)
    t_start = time.time()
    base = load_config(None)
    reductions = [float(x) for x in a.reductions.split(",") if x.strip()]
    rungs = []
    for red in reductions:
        name = rung_name(base, red)
        run = rung_config(red, name).run_dir()
        info = {"name": name, "run_dir": str(run), "exit": None}
        if not a.measure_only:
            info = build_rung(red, base)
        done = (run / "quantize" / "student_int8.onnx").is_file()
        status = "built" if done else (f"failed (exit {info['exit']})" if info["exit"] else "not built")
        rungs.append({"label": f"pruned {red:.0%}", "reduction": red, "run_dir": str(run), "status": status,
                      "stage_seconds": stage_seconds(run), "shipped_config": name == base.run.name})  # fmt: skip
    res = measure([r for r in rungs if r["status"] == "built"], base, a.threads, a.rounds)
    for k, r in res["rows"].items():
        for e in rungs:
            if k.startswith(e["label"] + " "):
                r["reduction"], r["format"] = e["reduction"], k.rsplit(" ", 1)[1]
    res["rungs"] = rungs
    res["generated_utc"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    res["seconds"] = time.time() - t_start
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
    plots = draw(res)
    build_md = None
    shipped = base.run_dir()
    if (shipped / "train" / "metrics.json").is_file():
        rep = collect(shipped)
        bplots = [f"{PLOTS.name}/{Path(p).name}" for p in draw_plots(rep, PLOTS)]
        # one level down: the build's report is a section of this document
        build_md = "\n".join("#" + ln if ln.startswith("#") else ln
                              for ln in render_markdown(rep, plots=bplots).splitlines())  # fmt: skip
    Path(a.docs).write_text(render(res, plots, build_md), encoding="utf-8")
    log(f"wrote {a.docs}, {RESULTS} and {len(plots)} plots in {res['seconds']:.0f}s")
    for k, r in res["rows"].items():
        log(
            f"{k:24s} {r['size_mb']:6.2f} MB  MACs {r['macs_ratio']:.3f}  p50 {r['p50_ratio']:.3f}  "
            f"ISIC {_f(r['isic_external_auroc'])}  PAD {_f(r['pad_auroc'])}  gap {_f(r['pad_fst_gap'])}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
