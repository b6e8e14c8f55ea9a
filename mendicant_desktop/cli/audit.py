"""``mendicant-desktop --audit LABELS.csv --images DIR --out REPORT.html``: the fairness audit, headless.

This module is the command line only. The run is the application layer's :func:`app.audit_run.run_audit`
(the Audit tab's too): the images are scored by :func:`app.scoring.iter_scored` (the code path of
``--batch``), metadata joined exactly as ``--batch --metadata`` joins it, then audited per Fitzpatrick skin
type by :func:`mendicant_desktop.core.audit.audit` and written as one self-contained HTML report
(:mod:`mendicant_desktop.core.report_html`) and optionally METRICS.json.

LABELS.csv columns (names case-insensitive, first match wins):

* image: ``image``, ``img_id`` (PAD-UFES-20), ``image_id`` (HAM10000), ``image_name``, ``isic_id``,
  ``file``, ``filename`` -- a file name (or relative path) under ``--images``;
* label: ``malignant`` (0/1, also true/false) or else ``dx`` (ISIC 2019 / HAM10000 / PAD codes, mapped by
  :func:`core.audit.dx_to_malignant`: MEL, BCC, SCC and HAM's akiec -> 1; NV/NEV, BKL, SEK, DF, VASC, AK
  and PAD's ACK -> 0);
* skin type: ``fst``, ``fitspatrick`` (PAD's spelling), ``fitzpatrick``: 1-6, I-VI or empty. Empty means the
  engine's image-based estimate (the batch row's ``fst_estimate``) is used; every group says how many of its
  types are labels and how many estimates;
* optional lesion category: ``three_partition`` (Fitzpatrick17k), ``partition``, ``lesion_category``: malignant /
  benign / non-neoplastic. With it the report adds malignant vs benign neoplasms beside malignant vs the rest;
* optional metadata fed to the model: ``age``, ``sex``/``gender``, ``site``/``region``/``localization``
  (read by :func:`app.tables.load_metadata_csv`, as ``--batch --metadata`` reads them). ``--metadata CSV`` replaces them.

Rows that cannot be used (no image name, no usable label, a bad skin type, a duplicate) are listed in the
report as unusable; images that fail to load or score are listed as failed. Neither is silently dropped,
and either makes the exit code 3.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence

from mendicant_desktop.app.audit_run import AuditRun, load_audit_inputs, model_card_dict, run_audit, to_report
from mendicant_desktop.app.errors import MetadataError
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.core.audit import GROUPINGS

from . import (
    EXIT_CODES_HELP,
    ArgumentParser,
    ExitCode,
    StopSignal,
    UsageError,
    check_threads,
    err,
    progress_bar,
    run_guarded,
    threads_help,
)

DESCRIPTION = """Audit the model per Fitzpatrick skin type on a labelled image set and write an HTML report.

LABELS.csv needs an image column (image, img_id, image_id, ...) and malignant (0/1) or dx (ISIC/HAM/PAD codes);
fst (1-6, I-VI or empty; PAD's 'fitspatrick' accepted) gives the skin type, empty meaning the engine's image-based
estimate. A three_partition column (malignant/benign/non-neoplastic, as Fitzpatrick17k's) adds malignant vs benign
neoplasms beside the headline malignant vs the rest. Optional age, sex/gender and site/region/localization columns are fed to the model as --batch
--metadata does. Images are scored through the --batch pipeline. The report is one self-contained HTML file."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="mendicant-desktop --audit",
        usage="mendicant-desktop --audit LABELS.csv --images DIR --out REPORT.html [options]",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP.replace("every input scored", "every labelled image scored and audited")
        + "\n\nExit code 3 here also covers label rows that could not be used (listed in the report).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--audit", required=True, metavar="LABELS.csv", help="labels file (see above)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder the image names are relative to")
    p.add_argument("--out", required=True, metavar="REPORT.html", help="the HTML report to write (replaced if present)")
    p.add_argument("--json", metavar="METRICS.json", help="also write the metrics as JSON")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="operating threshold on the malignancy score (default: the model card's)")
    p.add_argument("--metadata", metavar="CSV",
                   help="patient metadata joined by image name (as --batch --metadata); replaces LABELS.csv's own "
                        "age/sex/site columns")
    p.add_argument("--model", metavar="CARD",
                   help="model card (.json) to use; default $MENDICANT_MODEL, else the bundled model")
    p.add_argument("--threads", type=int, metavar="N",
                   help=threads_help())
    p.add_argument("--fst-grouping", choices=GROUPINGS, default="type",
                   help="skin-type groups: 'type' = each of I..VI (default), 'ddi' = I-II / III-IV / V-VI (keeps small "
                        "dark-skin groups above n=30)")
    p.add_argument("--n-boot", type=int, default=1000, metavar="N", help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.add_argument("--examples", type=int, default=4, metavar="K",
                   help="example heatmaps per skin type in the report (default 4; 0 for none)")
    p.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM saliency-in-lesion analysis")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the final summary line is still printed)")
    p.add_argument("--debug", action="store_true", help="log details and show tracebacks of internal errors")
    return p


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.part"
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _check_out(option: str, path: str, exts: tuple[str, ...]) -> None:
    if not path.lower().endswith(exts):
        raise UsageError(f"{option} {path!r}: the file name must end in {' or '.join(exts)}")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a folder")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option} {path!r}: the folder {folder} does not exist")


def _check_args(args: argparse.Namespace) -> None:
    _check_out("--out", args.out, (".html", ".htm"))
    if args.json:
        _check_out("--json", args.json, (".json",))
    if not os.path.isdir(args.images):
        raise UsageError(f"--images {args.images!r} is not a folder")
    check_threads(args.threads)
    for option, value in (("--n-boot", args.n_boot), ("--seed", args.seed), ("--examples", args.examples)):
        if value < 0:
            raise UsageError(f"{option} must be 0 or more")
    if args.threshold is not None and not (0.0 < args.threshold < 1.0):
        raise UsageError(f"--threshold must lie strictly between 0 and 1, got {args.threshold}")


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    return run_guarded("--audit", lambda: _run(build_parser(), args_list), args_list,
                       interrupted="interrupted; no report written")


def _score(engine, labels, metadata, args: argparse.Namespace) -> AuditRun:
    """The run with a progress bar; Ctrl-C/SIGTERM stop it cleanly (``interrupted`` set)."""
    stop = StopSignal()
    bar = progress_bar(len(labels.rows), args.quiet)
    stop.install()
    try:
        return run_audit(engine, labels, metadata, threshold=args.threshold, n_boot=args.n_boot, seed=args.seed,
                         explain=not args.no_explain, examples=args.examples, workers=args.threads,
                         stop=stop.event, progress=lambda done, total: bar.update(1), images_dir=args.images,
                         grouping=args.fst_grouping)
    finally:
        bar.close()
        stop.restore()


def _summary(run: AuditRun) -> str:
    s = f"{len(run.scores)} audited, {len(run.failed)} failed, {len(run.skipped)} unusable label rows"
    if run.result is not None:
        gap = run.result.auroc_gap
        s += f"; AUROC overall {run.result.overall.auroc:.3f}" + (
            f", gap {gap:.3f} over {', '.join(run.result.gap_groups)}" if math.isfinite(gap) else ", gap not computable")
    if run.neoplasm_result is not None:
        s += f"; malignant vs benign neoplasms AUROC {run.neoplasm_result.overall.auroc:.3f}"
    return s


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> ExitCode:
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return ExitCode.OK
    args = parser.parse_args(argv)
    _check_args(args)

    from mendicant_desktop import __version__
    from mendicant_desktop.core import report_html

    try:
        labels, metadata = load_audit_inputs(args.audit, args.images, args.metadata)
    except MetadataError as exc:
        raise UsageError(f"--metadata: {exc}") from None
    engine = load_engine(args.model, args.threads)
    t0 = time.perf_counter()
    try:
        run = _score(engine, labels, metadata, args)
    except KeyboardInterrupt:
        run = None
    if run is None or run.interrupted:
        done = run.n_done if run is not None else 0
        err(f"mendicant-desktop --audit: interrupted after {done} of {len(labels.rows)} images; no report written")
        return ExitCode.INTERRUPTED
    report = to_report(run, model_card_dict(engine.card), __version__)
    _write_atomic(args.out, report_html.render_html(report))
    if args.json:
        _write_atomic(args.json, json.dumps(report_html.report_dict(report), indent=2, ensure_ascii=False,
                                            allow_nan=False) + "\n")
    secs = time.perf_counter() - t0
    err(f"mendicant-desktop --audit: {_summary(run)} in {secs:.1f} s -> {args.out}"
        + (f", {args.json}" if args.json else ""))
    return ExitCode.PARTIAL if (run.failed or run.skipped or run.result is None) else ExitCode.OK
