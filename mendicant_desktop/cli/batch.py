"""``mendicant-desktop --batch PATH [PATH ...] --out FILE``: headless, streaming, resumable scoring.

Never imports Qt and needs no display. The reusable pieces for other headless modes (``--audit``):

* :func:`iter_inputs` expands files/folders into inputs (streaming, loop-safe, duplicate-free);
* :func:`score_paths` / :func:`iter_scored` score inputs through the engine and yield row dicts;
* :data:`COLUMNS` is the row layout; :func:`load_metadata_csv` reads a ``--metadata`` table.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence

from . import EXIT_CODES_HELP, ArgumentParser, ExitCode, StopSignal, UsageError, err, run_guarded, scoring
from .discover import InputItem, count_inputs, iter_inputs
from .metadata_csv import MetadataTable, load_metadata_csv
from .scoring import DEFAULT_BATCH_SIZE, iter_scored, score_paths
from .writers import (
    COLUMNS,
    OutputFileError,
    RowWriter,
    clean_text,
    columns_for,
    keep_latest_rows,
    output_format,
    path_key,
    read_existing,
)

__all__ = [
    "COLUMNS", "ExitCode", "InputItem", "MetadataTable", "build_engine", "iter_inputs", "iter_scored",
    "load_metadata_csv", "main", "score_paths",
]

log = logging.getLogger("mendicant_desktop.batch")

DESCRIPTION = """Score image files and folders without a window and write one row per input file.

Folders are walked recursively; images are recognised by content and by their extension in any case
(jpg jpeg png bmp gif tif tiff webp). Bad inputs (empty, truncated, not an image, too large,
unreadable) give a row with status=error and a reason; the run goes on. Each row is written and
flushed as soon as it is scored, so an interrupted run keeps every finished row; --resume completes it."""


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="mendicant-desktop --batch",
        usage="mendicant-desktop --batch PATH [PATH ...] --out FILE [options]",
        description=DESCRIPTION,
        epilog=EXIT_CODES_HELP + "\n\nColumns, metadata names and site spellings: docs/batch.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--batch", nargs="+", required=True, metavar="PATH", help="image files and/or folders")
    p.add_argument("--out", required=True, metavar="FILE", help="output file: .csv (UTF-8) or .jsonl (JSON Lines)")
    p.add_argument("--metadata", metavar="CSV",
                   help="patient metadata joined by image file name (image,age,sex,site or HAM10000/PAD names)")
    p.add_argument("--saliency-dir", metavar="DIR", help="write a Grad-CAM overlay PNG per scored image here")
    p.add_argument("--saliency-target", default="top", metavar="TARGET",
                   help="what the overlay explains: top (predicted class, default), malignancy, or a class code")
    p.add_argument("--resume", action="store_true",
                   help="continue FILE: skip inputs whose path and sha256 already have an ok row for this model")
    p.add_argument("--overwrite", action="store_true", help="replace an existing FILE instead of refusing")
    p.add_argument("--model", metavar="CARD",
                   help="model card (.json) to use; default $MENDICANT_MODEL, else the bundled model")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for inference and for decoding (default: up to 4, the core count)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"images per inference batch (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the final summary line is still printed)")
    p.add_argument("--debug", action="store_true", help="log details and show tracebacks of internal errors")
    return p


def build_engine(model: str | None = None, threads: int | None = None):
    """Load and verify ``model`` (a card path; default ``$MENDICANT_MODEL``, else the bundled model)."""
    from mendicant_desktop.core.bundle import ModelBundle
    from mendicant_desktop.core.inference import Engine

    card = model or os.environ.get("MENDICANT_MODEL") or None
    return Engine(ModelBundle.load(card), threads=threads)


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    stop = StopSignal()
    stop.install()  # from the start, so SIGTERM during start-up also ends with 130
    try:
        return run_guarded("--batch", lambda: _run(build_parser(), args_list, stop), args_list,
                           interrupted="interrupted")
    finally:
        stop.restore()


def _run(parser: argparse.ArgumentParser, argv: list[str], stop: StopSignal) -> ExitCode:
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return ExitCode.OK
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help
        return ExitCode(exc.code or 0) if exc.code in (0, None) else ExitCode.USAGE

    fmt = output_format(args.out)
    if fmt is None:
        raise UsageError(f"--out {args.out!r}: the file name must end in .csv or .jsonl")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other")
    out = args.out
    if os.path.isdir(out):
        raise UsageError(f"--out {out!r} is a folder")
    out_dir = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out {out!r}: the folder {out_dir} does not exist")
    exists = os.path.exists(out) and os.path.getsize(out) > 0
    if exists and not (args.resume or args.overwrite):
        raise UsageError(f"{out} already exists; use --resume to complete it, --overwrite to replace it, "
                     "or choose another --out")
    if args.saliency_dir and os.path.exists(args.saliency_dir) and not os.path.isdir(args.saliency_dir):
        raise UsageError(f"--saliency-dir {args.saliency_dir!r} is not a folder")

    from mendicant_desktop.core.errors import MendicantError, MetadataError, ModelVerificationError
    from mendicant_desktop.core.results import CLASS_NAMES

    if args.saliency_target not in ("top", "malignancy", *CLASS_NAMES):
        raise UsageError(f"--saliency-target must be top, malignancy or one of {', '.join(CLASS_NAMES)}")
    metadata: MetadataTable | None = None
    if args.metadata:
        try:
            metadata = load_metadata_csv(args.metadata)
        except MetadataError as exc:
            raise UsageError(f"--metadata: {exc}") from None
    try:
        engine = build_engine(args.model, args.threads)
    except ModelVerificationError as exc:
        raise UsageError(f"model verification failed: {exc}") from None
    except MendicantError as exc:
        raise UsageError(f"cannot load the model: {exc}") from None

    columns = columns_for(metadata is not None, bool(args.saliency_dir))
    skip = None
    existing = None
    if args.resume and exists:
        try:
            existing = read_existing(out, fmt, engine.card.sha256)
        except OutputFileError as exc:
            raise UsageError(f"--resume: {exc}") from None
        if existing.columns is not None and tuple(existing.columns) != columns:
            raise UsageError(f"--resume: {out} was written with other columns ({len(existing.columns)} vs {len(columns)}); "
                         "use the same --metadata/--saliency-dir options as the first run")
        if existing.duplicates:
            keep_latest_rows(out, fmt)
        done = existing.done
        if existing.truncated_tail:
            log.warning("removed a partial last row from %s (the previous run was killed mid-write)", out)

        def skip(path: str, sha256: str) -> bool:
            return sha256 in done.get(path_key(clean_text(path)), ())

    if args.overwrite and exists:
        os.unlink(out)

    from tqdm import tqdm

    exclude = [args.saliency_dir] if args.saliency_dir else []
    if args.saliency_dir:
        os.makedirs(args.saliency_dir, exist_ok=True)  # exists now, so the walk can leave it out
    total = count_inputs(args.batch, exclude=exclude)
    if stop.event.is_set():
        err("mendicant-desktop --batch: interrupted before scoring started")
        return ExitCode.INTERRUPTED
    if total == 0:
        err("mendicant-desktop --batch: no image files found under " + " ".join(args.batch))
    counts = {"ok": 0, "error": 0, "skipped": 0}
    try:
        writer = RowWriter(out, columns, fmt, append=bool(args.resume))
    except OSError as exc:
        raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()
    interrupted = False
    superseded = False
    bar = tqdm(total=total, unit="img", file=sys.stderr, disable=args.quiet, dynamic_ncols=True,
               mininterval=0.5, smoothing=0.1, desc="scoring")
    gen = scoring.iter_scored(
        iter_inputs(args.batch, exclude=exclude), engine, metadata=metadata, saliency_dir=args.saliency_dir,
        saliency_target=args.saliency_target, workers=args.threads, batch_size=args.batch_size,
        skip=skip, stop=stop.event, columns=columns,
    )
    try:
        for scored in gen:
            if scored.row is None:
                counts["skipped"] += 1
            else:
                writer.write(scored.row)
                counts[scored.row["status"]] += 1
                if existing is not None and path_key(scored.row["image"]) in existing.paths:
                    superseded = True
            bar.update(1)
        interrupted = stop.event.is_set()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        gen.close()
        writer.close()
        bar.close()
        if superseded:
            try:
                keep_latest_rows(out, fmt)  # a retried input's new row supersedes its old one
            except OSError as exc:
                err(f"mendicant-desktop --batch: could not remove superseded rows from {out} ({exc}); "
                     "run --resume again to tidy it")
    secs = time.perf_counter() - t0
    scored_n = counts["ok"] + counts["error"]
    rate = f", {scored_n / secs:.1f} images/s" if secs > 0 and scored_n else ""
    resumed = f", {counts['skipped']} already done" if args.resume else ""
    status = "interrupted: " if interrupted else ""
    err(f"mendicant-desktop --batch: {status}{counts['ok']} ok, {counts['error']} failed{resumed} "
         f"in {secs:.1f} s{rate} -> {out}")
    if interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.PARTIAL if counts["error"] else ExitCode.OK
