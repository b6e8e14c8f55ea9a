"""The bundled model's fairness audit on Fitzpatrick17k, per type and DDI-style: ``--audit`` run twice, tabulated.

``python benchmarks/fitzpatrick_audit_benchmark.py [--data ../shared/data] [--model CARD] [--render-only]
[--from-metrics TYPE.json DDI.json]``

Runs ``mendicant-desktop --audit fitzpatrick17k_clinical/labels.csv --fst-grouping {type,ddi} --no-explain`` (the
product's own command, so the figures are what a user gets), keeps the two METRICS.json in
``benchmarks/results/fitzpatrick17k_audit.json`` with the machine's CPU features, and generates
``docs/fitzpatrick17k_audit.md`` from it (never edit it by hand). ``--from-metrics`` takes two METRICS.json that
``--audit`` already wrote instead of running it again; ``--render-only`` regenerates the doc from the JSON.

Which images: with ``--split gate`` (the default) only the Fitzpatrick17k images of the bundled model's gate split
(``compression.adapt.load_split``; the card's split manifest must match), because the adapted model's head was
trained on this set's train split and selected on its select split: auditing every image would mix training images
in and overstate it. ``--split all`` audits every image,
which is fair only for a model that never trained on Fitzpatrick17k. The labels file's FST comes from the data set's
annotators, not from clinicians in a clinic; the engine's estimate fills the empty labels.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from compression.skintone_fit import git_commit  # noqa: E402
from mendicant_desktop.core.cpu import int8_cpu_flags as cpu_features  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results" / "fitzpatrick17k_audit.json"
DOC = REPO / "docs" / "fitzpatrick17k_audit.md"
COMPARISONS = (("headline", "Malignant vs the rest (headline)"),
               ("malignant_vs_benign_neoplasm", "Malignant vs benign neoplasms (non-neoplastic conditions left out)"))


def run_audit_cli(data: Path, grouping: str, out_dir: Path, model: str | None, n_boot: int,
                  labels: Path | None = None) -> dict[str, Any]:
    root = data / "fitzpatrick17k_clinical"
    js = out_dir / f"metrics_{grouping}.json"
    cmd = [sys.executable, "-m", "mendicant_desktop", "--audit", str(labels or root / "labels.csv"), "--images",
           str(root / "images"), "--out", str(out_dir / f"report_{grouping}.html"), "--json", str(js),
           "--fst-grouping", grouping, "--no-explain", "--quiet", "--n-boot", str(n_boot)]
    if model:
        cmd += ["--model", model]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"--audit failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(js.read_text(encoding="utf-8"))


def gate_labels(data: Path, card_path: Path, out: Path) -> dict[str, Any]:
    """Write the labels.csv rows of the gate split's Fitzpatrick17k images to ``out``; describe the subset.

    The split is recomputed by the build's own rule (``compression.adapt.load_split`` with the committed config) and
    must have the manifest hash the card records, so these are exactly the images training and selection never read.
    """
    import csv
    import os

    from compression.adapt import load_split
    from compression.config import load_config

    card = json.loads(card_path.read_text(encoding="utf-8"))
    want = ((card.get("provenance") or {}).get("splits") or {}).get("sha256")
    if not want:
        raise SystemExit(f"{card_path.name} records no split manifest: audit it with --split all")
    os.environ["MENDICANT_SHARED_DATA"] = str(data.resolve())
    sd = load_split(load_config())
    if sd.sha256 != want:
        raise SystemExit(f"the split manifest {sd.sha256[:12]} is not the card's {want[:12]}: the data or the rule changed")
    names = {sd.records[i].image for i in sd.rows("gate") if sd.records[i].dataset == "fitz"}
    src = data / "fitzpatrick17k_clinical" / "labels.csv"
    with src.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["image"] in names]
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return {"split": "gate", "manifest_sha256": sd.sha256, "n_rows": len(rows), "of_rows": sum(1 for _ in
            src.open(encoding="utf-8")) - 1}


def _keep(m: dict[str, Any]) -> dict[str, Any]:
    """The parts of a METRICS.json the doc needs (per-image rows left out)."""
    keys = ("model", "threshold", "grouping", "overall", "groups", "auroc_gap", "auroc_gap_ci95", "gap_groups",
            "fst_source_counts", "n_audited", "n_boot", "seed", "malignant_vs_benign_neoplasm")
    out = {k: m.get(k) for k in keys}
    out["model_card"] = {k: (m.get("model_card") or {}).get(k) for k in ("name", "version", "sha256")}
    out["n_failed"] = len(m.get("failed") or [])
    out["n_skipped"] = len(m.get("skipped") or [])
    return out



def _title(g: str) -> str:
    return {"overall": "All images", "unknown": "unknown"}.get(g, "FST " + g.replace("-", "–"))


def _auroc(g: dict[str, Any]) -> str:
    if g.get("auroc") is None:
        return "n/a"
    lo, hi = g["auroc_ci95"]
    return f"{g['auroc']:.3f} [{lo:.3f}–{hi:.3f}]" if lo is not None and hi is not None else f"{g['auroc']:.3f}"


def _source(g: dict[str, Any]) -> str:
    lab, est = g.get("n_fst_label", 0), g.get("n_fst_estimated", 0)
    return {"label": "label", "estimated": "estimated"}.get(g["fst_source"], f"mixed: {lab} label + {est} estimated")


def _table(res: dict[str, Any]) -> list[str]:
    lines = ["| group | n | malignant | AUROC [95% CI] | FST from |", "|---|---|---|---|---|"]
    for name, g in [("overall", res["overall"]), *res["groups"].items()]:
        auc = _auroc(g) if g["sufficient"] or name == "overall" else f"insufficient (n={g['n']}, {g['n_pos']} malignant)"
        lines.append(f"| {_title(name)} | {g['n']} | {g['n_pos']} | {auc} | {_source(g)} |")
    gap = res.get("auroc_gap")
    if gap is None:
        lines += ["", "AUROC gap: not computable (fewer than two sufficient groups)."]
    else:
        lo, hi = res["auroc_gap_ci95"]
        lines += ["", f"AUROC gap (best − worst over {', '.join(_title(g) for g in res['gap_groups'])}): "
                  f"{gap:.3f} [{lo:.3f}–{hi:.3f}]."]
    return lines


def _chance_text(r: dict[str, Any]) -> str:
    """Which sufficient groups' AUROC intervals include 0.5 (no evidence the model ranks better than chance)."""
    at_chance = [_title(n) for n, g in r["groups"].items()
                 if n != "unknown" and g["sufficient"] and g["auroc_ci95"][0] is not None and g["auroc_ci95"][0] <= 0.5]
    if not at_chance:
        return "Every sufficient group's AUROC interval lies above 0.5."
    return (f"The AUROC interval includes 0.5 (no evidence of better than chance) for: {', '.join(at_chance)}.")


def _subset_text(sub: dict[str, Any]) -> str:
    if sub.get("split") == "gate":
        return (f"**Which images:** the {sub['n_rows']} of {sub['of_rows']} images in the bundled model's gate split "
                f"(split manifest `{sub['manifest_sha256'][:12]}`, by `duplicate_group`), which training and model "
                "selection never read. The model's head was trained on this data set's train split, so an audit of "
                "every image would include its training images and overstate it.")
    return ("**Which images:** every image of the set. That is a fair test only of a model that never trained on "
            "Fitzpatrick17k.")


def render(res: dict[str, Any]) -> str:
    t = res["runs"]["type"]
    card = t["model_card"]
    src = t["fst_source_counts"]
    lines = [
        "<!-- generated by benchmarks/fitzpatrick_audit_benchmark.py from benchmarks/results/fitzpatrick17k_audit.json;"
        " do not edit -->",
        "# The bundled model's fairness audit on Fitzpatrick17k",
        "",
        f"`mendicant-desktop --audit fitzpatrick17k_clinical/labels.csv --fst-grouping type|ddi` with the bundled "
        f"model **{card['name']} {card['version']}** (sha256 `{(card['sha256'] or '')[:12]}`), threshold "
        f"{t['threshold']:.3f}, {t['n_audited']} images audited ({t['n_failed']} failed, {t['n_skipped']} unusable "
        f"rows), 95% CIs from a stratified bootstrap of {t['n_boot']} resamples (seed {t['seed']}). "
        f"Generated {res['generated_utc']} at commit `{res['code_commit']}` on a CPU with {', '.join(res['cpu_features']) or 'none of AVX2, AVX-VNNI, AVX512-VNNI'} "
        "(INT8 results depend on the CPU's instruction set).",
        "",
        f"Skin type: the data set annotators' FST for {src.get('label', 0)} images; the engine's image-based estimate "
        f"for the {src.get('estimated', 0)} with an empty label. The \"FST from\" column says, per group, how many of "
        "each it holds. Groups need n ≥ 30 with ≥ 5 malignant and ≥ 5 other images, or they are reported as "
        "insufficient.",
        "",
        "Fitzpatrick17k is web-atlas clinical photography of 21 conditions, many of which the 7-class model has no "
        "class for (Kaposi sarcoma, mycosis fungoides, inflammatory diseases): malignant vs the rest is a fair "
        "question to ask of it, a 7-class accuracy is not.",
        "",
        _subset_text(res.get("subset") or {"split": "all"}),
        "",
    ]
    for key, title in COMPARISONS:
        lines += [f"## {title}", ""]
        for grouping, gtitle in (("type", "Per type I–VI"), ("ddi", "DDI-style I–II / III–IV / V–VI")):
            run = res["runs"][grouping]
            r = run if key == "headline" else run.get("malignant_vs_benign_neoplasm")
            lines += [f"### {gtitle}", ""]
            lines += (_table(r) + ["", _chance_text(r)]) if r else ["Not computable."]
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default=None, help="model card (default: the bundled one)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--from-metrics", nargs=2, type=Path, metavar=("TYPE.json", "DDI.json"))
    ap.add_argument("--render-only", action="store_true")
    ap.add_argument("--split", choices=("gate", "all"), default="gate",
                    help="gate: only the bundled model's gate-split images (default); all: every image")
    a = ap.parse_args(argv)
    if a.render_only:
        res = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        subset: dict[str, Any] = {"split": "all"}
        if a.from_metrics:
            if a.split != "all":
                raise SystemExit("--from-metrics does not know which images were audited: pass --split all")
            runs = {g: json.loads(p.read_text(encoding="utf-8")) for g, p in zip(("type", "ddi"), a.from_metrics)}
        else:
            with tempfile.TemporaryDirectory() as tmp:
                labels = None
                if a.split == "gate":
                    from mendicant_desktop.core.bundle import default_model_card

                    card = Path(a.model) if a.model else default_model_card()
                    labels = Path(tmp) / "labels_gate.csv"
                    subset = gate_labels(a.data, card, labels)
                runs = {g: run_audit_cli(a.data, g, Path(tmp), a.model, a.n_boot, labels) for g in ("type", "ddi")}
        for g, m in runs.items():
            if m.get("grouping") != g:
                raise SystemExit(f"the {g} metrics file has grouping {m.get('grouping')!r}")
        res = {"generated_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "code_commit": git_commit(short=True), "cpu_features": cpu_features(),
               "subset": subset, "runs": {g: _keep(m) for g, m in runs.items()}}
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    DOC.write_text(render(res), encoding="utf-8")
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
