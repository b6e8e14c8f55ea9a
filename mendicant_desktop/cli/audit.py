"""``mendicant-desktop --audit LABELS.csv --images DIR --out REPORT.html``: the fairness audit, headless.

The images are scored by the batch pipeline (:func:`mendicant_desktop.cli.scoring.iter_scored`, the code
path of ``--batch``), metadata joined exactly as ``--batch --metadata`` joins it, then audited per
Fitzpatrick skin type by :func:`mendicant_desktop.core.audit.audit` and written as one self-contained HTML
report (:mod:`mendicant_desktop.core.report_html`) and optionally METRICS.json.

LABELS.csv columns (names case-insensitive, first match wins):

* image: ``image``, ``img_id`` (PAD-UFES-20), ``image_id`` (HAM10000), ``image_name``, ``isic_id``,
  ``file``, ``filename`` -- a file name (or relative path) under ``--images``;
* label: ``malignant`` (0/1, also true/false) or else ``dx`` (ISIC 2019 / HAM10000 / PAD codes, mapped by
  :func:`core.audit.dx_to_malignant`: MEL, BCC, SCC and HAM's akiec -> 1; NV/NEV, BKL, SEK, DF, VASC, AK
  and PAD's ACK -> 0);
* skin type: ``fst``, ``fitspatrick`` (PAD's spelling), ``fitzpatrick``: 1-6, I-VI or empty. Empty means the
  engine's ITA estimate (the batch row's ``fst_estimate``) is used and the group is marked ``estimated``;
* optional metadata fed to the model: ``age``, ``sex``/``gender``, ``site``/``region``/``localization``
  (read by :func:`load_metadata_csv`, as ``--batch --metadata`` reads them). ``--metadata CSV`` replaces them.

Rows that cannot be used (no image name, no usable label, a bad skin type, a duplicate) are listed in the
report as unusable; images that fail to load or score are listed as failed. Neither is silently dropped,
and either makes the exit code 3.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import EXIT_CODES_HELP, ArgumentParser, ExitCode, StopSignal, UsageError, err, run_guarded
from .metadata_csv import sniff_dialect

log = logging.getLogger("mendicant_desktop.audit")

IMAGE_COLUMNS: tuple[str, ...] = ("image", "img_id", "image_id", "image_name", "isic_id", "file", "filename")
FST_COLUMNS: tuple[str, ...] = ("fst", "fitspatrick", "fitzpatrick")
META_COLUMNS: frozenset[str] = frozenset({
    "age", "age_approx", "sex", "gender", "site", "region", "localization", "anatom_site_general",
    "anatom_site_general_challenge",
})
_TRUE = {"1", "1.0", "true", "yes", "y", "malignant"}
_FALSE = {"0", "0.0", "false", "no", "n", "benign"}
_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")

DESCRIPTION = """Audit the model per Fitzpatrick skin type on a labelled image set and write an HTML report.

LABELS.csv needs an image column (image, img_id, image_id, ...) and malignant (0/1) or dx (ISIC/HAM/PAD codes);
fst (1-6, I-VI or empty; PAD's 'fitspatrick' accepted) gives the skin type, empty meaning the engine's ITA
estimate. Optional age, sex/gender and site/region/localization columns are fed to the model as --batch
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
                   help="CPU threads for inference and for decoding (default: up to 4, the core count)")
    p.add_argument("--n-boot", type=int, default=1000, metavar="N", help="bootstrap resamples for the 95%% CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="bootstrap seed (default 0)")
    p.add_argument("--examples", type=int, default=4, metavar="K",
                   help="example heatmaps per skin type in the report (default 4; 0 for none)")
    p.add_argument("--no-explain", action="store_true", help="skip the Grad-CAM saliency-in-lesion analysis")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the final summary line is still printed)")
    p.add_argument("--debug", action="store_true", help="log details and show tracebacks of internal errors")
    return p


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    line: int
    image: str  # as written in the labels file
    path: str  # resolved under --images
    malignant: int
    fst: str  # 'I'..'VI' or 'unknown' (no label)


@dataclass
class Labels:
    rows: list[LabelRow]
    skipped: list[tuple[str, str]]
    has_meta_columns: bool


def _read_text(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise UsageError(f"labels file not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"labels file {path} is a folder") from None
    except OSError as exc:
        raise UsageError(f"cannot read labels file {path}: {exc.strerror or exc}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def _pick(norm: list[str], names: Sequence[str]) -> int | None:
    for n in names:
        if n in norm:
            return norm.index(n)
    return None


def _parse_malignant(value: str) -> int | None:
    v = value.strip().lower()
    if v in _TRUE:
        return 1
    if v in _FALSE:
        return 0
    return None


def resolve_image(images_dir: str, name: str) -> str:
    """``name`` under ``images_dir`` (absolute names kept); a name without extension finds ``name.jpg`` etc."""
    name = name.strip().replace("\\", "/")
    path = name if os.path.isabs(name) else os.path.join(images_dir, *name.split("/"))
    if not os.path.splitext(path)[1] and not os.path.exists(path):
        for ext in _EXTENSIONS:
            if os.path.isfile(path + ext):
                return path + ext
    return path


def read_labels(path: str, images_dir: str) -> Labels:
    """Parse LABELS.csv. Raises :class:`UsageError` for a file that cannot be a labels file at all."""
    from mendicant_desktop.core.audit import dx_to_malignant, parse_fst

    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), sniff_dialect(text[:8192]))
    try:
        header = next(reader)
    except StopIteration:
        raise UsageError(f"labels file {path} is empty") from None
    except csv.Error as exc:
        raise UsageError(f"labels file {path} is not a readable CSV file ({exc})") from None
    norm = [h.strip().lower() for h in header]
    i_img = _pick(norm, IMAGE_COLUMNS)
    if i_img is None:
        raise UsageError(f"labels file {path}: no image column; expected one of {', '.join(IMAGE_COLUMNS)} "
                     f"(found {', '.join(header)})")
    i_mal, i_dx, i_fst = _pick(norm, ("malignant",)), _pick(norm, ("dx",)), _pick(norm, FST_COLUMNS)
    if i_mal is None and i_dx is None:
        raise UsageError(f"labels file {path}: needs a 'malignant' (0/1) or a 'dx' column (found {', '.join(header)})")
    rows: list[LabelRow] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, int] = {}

    def cell(row: list[str], i: int | None) -> str:
        return row[i].strip() if i is not None and i < len(row) else ""

    try:
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            image = cell(row, i_img)
            if not image:
                skipped.append((f"(line {line})", "no image name"))
                continue
            mal = _parse_malignant(cell(row, i_mal)) if i_mal is not None else None
            bad_mal = mal is None and i_mal is not None and bool(cell(row, i_mal))
            if bad_mal and (i_dx is None or dx_to_malignant(cell(row, i_dx)) is None):
                skipped.append((image, f"line {line}: malignant must be 0 or 1, got {cell(row, i_mal)!r}"))
                continue
            if mal is None and i_dx is not None:
                mal = dx_to_malignant(cell(row, i_dx))
            if mal is None:
                dx = cell(row, i_dx)
                why = f"unknown diagnosis code {dx!r}" if dx else "no malignant/dx label"
                skipped.append((image, f"line {line}: {why}"))
                continue
            try:
                fst = parse_fst(cell(row, i_fst))
            except ValueError as exc:
                skipped.append((image, f"line {line}: {exc}"))
                continue
            key = image.replace("\\", "/")
            if key in seen:
                skipped.append((image, f"line {line}: duplicate of line {seen[key]} (only the first is audited)"))
                continue
            seen[key] = line
            rows.append(LabelRow(line, image, resolve_image(images_dir, image), mal, fst))
    except csv.Error as exc:
        raise UsageError(f"labels file {path}: malformed CSV near line {reader.line_num} ({exc})") from None
    return Labels(rows, skipped, any(c in META_COLUMNS for c in norm))


# --------------------------------------------------------------------------------------------------
# Grad-CAM capture around the batch pipeline
# --------------------------------------------------------------------------------------------------


@dataclass
class _Capture:
    malignancy: float
    cam: np.ndarray | None
    saliency: Any  # core.explain.SaliencyInLesion
    thumb: np.ndarray | None


class ExplainingEngine:
    """Wraps an :class:`Engine` for :func:`iter_scored` so each scored batch also yields its malignancy
    Grad-CAM and saliency-in-lesion ratio. Scores are the engine's own (Grad-CAM comes from the same
    forward pass and changes no probability); captures are queued in scoring order, which is the order
    :func:`iter_scored` yields the ok rows in."""

    def __init__(self, engine: Any, *, thumb_step: int = 3) -> None:
        self._engine = engine
        self._thumb_step = thumb_step
        self.captures: deque[_Capture] = deque()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def predict_preprocessed(self, x: np.ndarray, metadata: Any = None, **kwargs: Any) -> list[Any]:
        from mendicant_desktop.core.explain import SaliencyInLesion, saliency_in_lesion, to_uint8

        kwargs.update(cam=True, cam_target="malignancy")
        preds = self._engine.predict_preprocessed(x, metadata, **kwargs)
        for xi, p in zip(x, preds, strict=True):
            try:
                img = to_uint8(xi)
                sal = saliency_in_lesion(p.cam, img)
                thumb = np.ascontiguousarray(img[:: self._thumb_step, :: self._thumb_step])
            except Exception as exc:  # an explanation problem must never fail the scoring
                log.debug("saliency analysis failed", exc_info=True)
                sal, thumb = SaliencyInLesion(None, None, "error", f"{type(exc).__name__}: {exc}"), None
            self.captures.append(_Capture(float(p.malignancy), p.cam, sal, thumb))
        return preds


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


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


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    return run_guarded("--audit", lambda: _run(build_parser(), args_list), args_list,
                       interrupted="interrupted; no report written")


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> ExitCode:
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return ExitCode.OK
    args = parser.parse_args(argv)
    _check_out("--out", args.out, (".html", ".htm"))
    if args.json:
        _check_out("--json", args.json, (".json",))
    if not os.path.isdir(args.images):
        raise UsageError(f"--images {args.images!r} is not a folder")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.n_boot < 0:
        raise UsageError("--n-boot must be 0 or more")
    if args.seed < 0:
        raise UsageError("--seed must be 0 or more")
    if args.examples < 0:
        raise UsageError("--examples must be 0 or more")
    if args.threshold is not None and not (0.0 < args.threshold < 1.0):
        raise UsageError(f"--threshold must lie strictly between 0 and 1, got {args.threshold}")

    from mendicant_desktop import __version__
    from mendicant_desktop.core import audit as core_audit
    from mendicant_desktop.core import report_html
    from mendicant_desktop.core.errors import MendicantError, MetadataError, ModelVerificationError
    from mendicant_desktop.core.explain import summarize_saliency

    from .batch import build_engine
    from .discover import InputItem
    from .metadata_csv import load_metadata_csv
    from .scoring import iter_scored

    labels = read_labels(args.audit, args.images)
    if not labels.rows:
        first = f" (e.g. {labels.skipped[0][0]}: {labels.skipped[0][1]})" if labels.skipped else ""
        raise UsageError(f"labels file {args.audit}: no usable rows{first}")
    metadata = None
    meta_source = args.metadata or (args.audit if labels.has_meta_columns else None)
    if meta_source:
        try:
            metadata = load_metadata_csv(meta_source)
        except MetadataError as exc:
            raise UsageError(f"{'--metadata' if args.metadata else 'labels file metadata'}: {exc}") from None
    try:
        engine = build_engine(args.model, args.threads)
    except ModelVerificationError as exc:
        raise UsageError(f"model verification failed: {exc}") from None
    except MendicantError as exc:
        raise UsageError(f"cannot load the model: {exc}") from None
    card = engine.card
    threshold = float(card.threshold if args.threshold is None else args.threshold)
    explain = not args.no_explain
    scorer = ExplainingEngine(engine) if explain else engine

    from tqdm import tqdm

    stop = StopSignal()
    total = len(labels.rows)
    scores: list[float] = []
    y: list[int] = []
    groups: list[str] = []
    sources: list[str] = []
    failed: list[tuple[str, str]] = []
    sal_items: list[Any] = []
    cams: list[np.ndarray | None] = []
    examples: dict[str, list[report_html.ExampleTile]] = {}
    per_image: list[dict[str, Any]] = []
    n_done = 0
    t0 = time.perf_counter()
    bar = tqdm(total=total, unit="img", file=sys.stderr, disable=args.quiet, dynamic_ncols=True,
               mininterval=0.5, smoothing=0.1, desc="scoring")
    stop.install()
    gen = iter_scored((InputItem(r.path) for r in labels.rows), scorer, metadata=metadata, workers=args.threads,
                      stop=stop.event)
    interrupted = False
    try:
        for lab, scored in zip(labels.rows, gen, strict=False):
            n_done += 1
            bar.update(1)
            row = scored.row
            if scored.path != lab.path or row is None:  # cannot happen: one row per input, in order
                raise RuntimeError(f"batch pipeline out of order at {lab.image!r}")
            if row.get("status") != "ok":
                failed.append((lab.image, str(row.get("error") or "unknown error")))
                continue
            mal = float(row["malignancy"])
            if not math.isfinite(mal):
                failed.append((lab.image, "the model returned a non-finite score"))
                continue
            if lab.fst != "unknown":
                grp, src = lab.fst, "label"
            else:
                grp, src = core_audit.parse_fst(row.get("fst_estimate") or "unknown"), "estimated"
            scores.append(min(1.0, max(0.0, mal)))
            y.append(lab.malignant)
            groups.append(grp)
            sources.append(src)
            per_image.append({"image": lab.image, "malignant": lab.malignant, "score": round(mal, 8), "fst": grp,
                              "fst_source": src, "sha256": row.get("sha256")})
            if explain:
                cap = scorer.captures.popleft() if scorer.captures else None
                if cap is None or abs(cap.malignancy - mal) > 1e-6:
                    raise RuntimeError(f"Grad-CAM capture out of step with the scored rows at {lab.image!r}")
                sal_items.append(cap.saliency)
                per_image[-1]["saliency_in_lesion"] = (None if cap.saliency.ratio is None
                                                       else round(cap.saliency.ratio, 6))
                per_image[-1]["lesion_fraction"] = (None if cap.saliency.lesion_fraction is None
                                                    else round(cap.saliency.lesion_fraction, 6))
                cams.append(cap.cam)
                tiles = examples.setdefault(grp, [])
                if (len(tiles) < args.examples and cap.thumb is not None and cap.cam is not None
                        and cap.saliency.ratio is not None):
                    caption = (f"{os.path.basename(lab.image)[:22]} · {'malignant' if lab.malignant else 'benign'}"
                               f" · score {mal:.2f} · in-lesion {cap.saliency.ratio:.2f}")
                    tiles.append(report_html.ExampleTile(cap.thumb, cap.cam, caption))
        interrupted = stop.event.is_set()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        gen.close()
        bar.close()
        stop.restore()
    if interrupted or n_done < total:
        err(f"mendicant-desktop --audit: interrupted after {n_done} of {total} images; no report written")
        return ExitCode.INTERRUPTED

    result = None
    if scores:
        result = core_audit.audit(scores, y, groups, threshold, n_boot=args.n_boot, seed=args.seed,
                                  fst_source=sources, model=card.name)
    saliency = summarize_saliency(sal_items, groups, cams) if explain and sal_items else None
    note = ""
    if saliency:
        kinds = saliency["overall"].mask_kinds if "overall" in saliency else {}
        no_ratio = [s.reason for s in sal_items if s.ratio is None]
        note = ("Lesion masks: " + ", ".join(f"{v} {k.replace('-', ' ')}" for k, v in sorted(kinds.items()))
                + " (masked crop = the non-black region of a background-removed image; lesion split = the dark "
                "side of the engine's lesion/skin split).")
        if no_ratio:
            note += f" No ratio for {len(no_ratio)} image(s) (e.g. {no_ratio[0]})."
    report = report_html.AuditReport(
        result=result, model_card={**card.raw, "name": card.name, "version": card.version, "sha256": card.sha256,
                                   "size_bytes": card.size_bytes, "threshold": card.threshold,
                                   "provenance": card.provenance, "metrics": card.metrics},
        scores=scores, labels=y, groups=groups, fst_sources=sources, failed=failed, skipped=labels.skipped,
        saliency=saliency, saliency_note=note, examples=examples, per_image=per_image, labels_path=os.path.abspath(args.audit),
        images_dir=os.path.abspath(args.images), n_boot=args.n_boot, seed=args.seed, app_version=__version__,
    )
    _write_atomic(args.out, report_html.render_html(report))
    if args.json:
        _write_atomic(args.json, json.dumps(report_html.report_dict(report), indent=2, ensure_ascii=False,
                                            allow_nan=False) + "\n")
    secs = time.perf_counter() - t0
    summary = f"{len(scores)} audited, {len(failed)} failed, {len(labels.skipped)} unusable label rows"
    if result is not None:
        gap = result.auroc_gap
        summary += f"; AUROC overall {result.overall.auroc:.3f}" + (
            f", gap {gap:.3f} over {', '.join(result.gap_groups)}" if math.isfinite(gap) else ", gap not computable")
    err(f"mendicant-desktop --audit: {summary} in {secs:.1f} s -> {args.out}" + (f", {args.json}" if args.json else ""))
    return ExitCode.PARTIAL if (failed or labels.skipped or result is None) else ExitCode.OK
