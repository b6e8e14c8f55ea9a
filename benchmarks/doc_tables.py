"""The figure tables of the docs, generated from the benchmarks' JSON under ``benchmarks/results/``.

A doc holds each generated table between two markers naming the JSON file and the table::

    <!-- BEGIN GENERATED batch_benchmark.json throughput: python benchmarks/doc_tables.py; do not edit -->
    ...
    <!-- END GENERATED -->

``python benchmarks/doc_tables.py`` rewrites every such block from the JSON; ``--check`` only reports the blocks
that differ (exit 1). ``tests/test_doc_tables.py`` runs the check, so a doc never shows figures its JSON does not
hold. The JSON files are written by ``benchmarks/batch_benchmark.py``, ``benchmarks/gui_benchmark.py`` and
``benchmarks/bundle_size.py``; re-run one, then this script, and commit both. ``model_card.json`` names the
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
DOCS = ("docs/batch.md", "docs/gui.md", "docs/production_deployment_guide.md", "docs/model_card.md")
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
    lines = [f"{_model_of_card(d)}: {cal['n']} calibration inputs ({cal['n_distinct']} distinct images), method "
             f"`{cal['method']}`; {cal['source']}.", "",
             "| FST group | available | distinct drawn | inputs (with repeats) |", "|---|---|---|---|"]
    for g, r in cal["per_group"].items():
        lines.append(f"| {g} | {r['available']:,} | {r['distinct']} | {r['taken']} |")
    return "\n".join(lines) + "\n"


def _model_of_card(d: dict[str, Any]) -> str:
    return f"`{d.get('name', '?')}` {d.get('version', '?')}"


#: (JSON file, table name) -> renderer.
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
