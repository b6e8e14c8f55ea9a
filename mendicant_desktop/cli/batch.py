"""``mendicant-desktop --batch PATH [PATH ...] --out FILE``: headless, streaming, resumable scoring.

Never imports Qt and needs no display. This module is the command line only (arguments, progress bar,
signals, the summary line); the work is the application layer's: :func:`app.inputs.iter_inputs` finds
the inputs, :func:`app.scoring.iter_scored` scores them, :mod:`app.rows` / :mod:`app.output` write rows.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mendicant_desktop.app.errors import MetadataError, OutputFileError
from mendicant_desktop.app.inputs import count_inputs, extensions_text, iter_inputs
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.output import (
    ExistingRows,
    RowWriter,
    keep_latest_rows,
    output_format,
    path_key,
    read_existing,
)
from mendicant_desktop.app.rows import STATUS_ERROR, STATUS_OK, clean_text, columns_for
from mendicant_desktop.app.scoring import DEFAULT_BATCH_SIZE, iter_scored
from mendicant_desktop.app.tables import MetadataTable, load_metadata_csv
from mendicant_desktop.core.results import CLASS_NAMES

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

log = logging.getLogger("mendicant_desktop.batch")

DESCRIPTION = f"""Score image files and folders without a window and write one row per input file.

Folders are walked recursively; images are recognised by content and by their extension in any case
({extensions_text(" ")}). Bad inputs (empty, truncated, not an image, too large,
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
                   help=threads_help())
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, metavar="B",
                   help=f"images per inference batch (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--quiet", action="store_true", help="no progress bar (the final summary line is still printed)")
    p.add_argument("--debug", action="store_true", help="log details and show tracebacks of internal errors")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    stop = StopSignal()
    stop.install()  # from the start, so SIGTERM during start-up also ends with 130
    try:
        return run_guarded("--batch", lambda: _run(build_parser(), args_list, stop), args_list,
                           interrupted="interrupted")
    finally:
        stop.restore()


def _check_args(args: argparse.Namespace) -> str:
    """Refuse contradictory or unusable options before anything is loaded; returns the output format."""
    fmt = output_format(args.out)
    if fmt is None:
        raise UsageError(f"--out {args.out!r}: the file name must end in .csv or .jsonl")
    check_threads(args.threads)
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
    if _nonempty(out) and not (args.resume or args.overwrite):
        raise UsageError(f"{out} already exists; use --resume to complete it, --overwrite to replace it, "
                         "or choose another --out")
    if args.saliency_dir and os.path.exists(args.saliency_dir) and not os.path.isdir(args.saliency_dir):
        raise UsageError(f"--saliency-dir {args.saliency_dir!r} is not a folder")
    if args.saliency_target not in ("top", "malignancy", *CLASS_NAMES):
        raise UsageError(f"--saliency-target must be top, malignancy or one of {', '.join(CLASS_NAMES)}")
    return fmt


def _nonempty(path: str) -> bool:
    return os.path.exists(path) and os.path.getsize(path) > 0


@dataclass
class _Resume:
    """What ``--resume`` found in the existing output: which inputs to skip."""

    existing: ExistingRows | None = None
    skip: Callable[[str, str], bool] | None = None


def _resume_state(out: str, fmt: str, model_sha256: str, columns: tuple[str, ...]) -> _Resume:
    try:
        existing = read_existing(out, fmt, model_sha256)
    except OutputFileError as exc:
        raise UsageError(f"--resume: {exc}") from None
    if existing.columns is not None and tuple(existing.columns) != columns:
        raise UsageError(f"--resume: {out} was written with other columns ({len(existing.columns)} vs {len(columns)}); "
                         "use the same --metadata/--saliency-dir options as the first run")
    if existing.duplicates:
        keep_latest_rows(out, fmt)
    if existing.truncated_tail:
        log.warning("removed a partial last row from %s (the previous run was killed mid-write)", out)
    done = existing.done

    def skip(path: str, sha256: str) -> bool:
        return sha256 in done.get(path_key(clean_text(path)), ())

    return _Resume(existing, skip)


@dataclass
class _Tally:
    counts: dict[str, int] = field(default_factory=lambda: {STATUS_OK: 0, STATUS_ERROR: 0, "skipped": 0})
    interrupted: bool = False
    superseded: bool = False  # a retried input's new row supersedes an old one: tidy the file at the end


def _write_rows(gen, writer: RowWriter, bar, resume: _Resume, stop: StopSignal) -> _Tally:
    tally = _Tally()
    paths = resume.existing.paths if resume.existing is not None else set()
    try:
        for scored in gen:
            if scored.row is None:
                tally.counts["skipped"] += 1
            else:
                writer.write(scored.row)
                tally.counts[scored.row["status"]] += 1
                tally.superseded |= bool(paths) and path_key(scored.row["image"]) in paths
            bar.update(1)
        tally.interrupted = stop.event.is_set()
    except KeyboardInterrupt:
        tally.interrupted = True
    return tally


def _summary(tally: _Tally, secs: float, out: str, resumed: bool) -> str:
    c = tally.counts
    scored_n = c[STATUS_OK] + c[STATUS_ERROR]
    rate = f", {scored_n / secs:.1f} images/s" if secs > 0 and scored_n else ""
    skipped = f", {c['skipped']} already done" if resumed else ""
    status = "interrupted: " if tally.interrupted else ""
    return (f"mendicant-desktop --batch: {status}{c[STATUS_OK]} ok, {c[STATUS_ERROR]} failed{skipped} "
            f"in {secs:.1f} s{rate} -> {out}")


def _load_metadata(path: str | None) -> MetadataTable | None:
    if not path:
        return None
    try:
        return load_metadata_csv(path)
    except MetadataError as exc:
        raise UsageError(f"--metadata: {exc}") from None


def _run(parser: argparse.ArgumentParser, argv: list[str], stop: StopSignal) -> ExitCode:
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        return ExitCode.OK
    args = parser.parse_args(argv)
    fmt = _check_args(args)
    out = args.out
    exists = _nonempty(out)
    metadata = _load_metadata(args.metadata)
    engine = load_engine(args.model, args.threads)
    columns = columns_for(metadata is not None, bool(args.saliency_dir))
    resume = _resume_state(out, fmt, engine.card.sha256, columns) if args.resume and exists else _Resume()
    if args.overwrite and exists:
        os.unlink(out)
    exclude = [args.saliency_dir] if args.saliency_dir else []
    if args.saliency_dir:
        os.makedirs(args.saliency_dir, exist_ok=True)  # exists now, so the walk can leave it out
    total = count_inputs(args.batch, exclude=exclude)
    if stop.event.is_set():
        err("mendicant-desktop --batch: interrupted before scoring started")
        return ExitCode.INTERRUPTED
    if total == 0:
        err("mendicant-desktop --batch: no image files found under " + " ".join(args.batch))
    try:
        writer = RowWriter(out, columns, fmt, append=bool(args.resume))
    except OSError as exc:
        raise UsageError(f"cannot write --out {out}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()
    bar = progress_bar(total, args.quiet)
    gen = iter_scored(
        iter_inputs(args.batch, exclude=exclude), engine, metadata=metadata, saliency_dir=args.saliency_dir,
        saliency_target=args.saliency_target, workers=args.threads, batch_size=args.batch_size,
        skip=resume.skip, stop=stop.event, columns=columns,
    )
    try:
        tally = _write_rows(gen, writer, bar, resume, stop)
    finally:
        gen.close()
        writer.close()
        bar.close()
    if tally.superseded:
        try:
            keep_latest_rows(out, fmt)  # a retried input's new row supersedes its old one
        except OSError as exc:
            err(f"mendicant-desktop --batch: could not remove superseded rows from {out} ({exc}); "
                "run --resume again to tidy it")
    err(_summary(tally, time.perf_counter() - t0, out, bool(args.resume)))
    if tally.interrupted:
        return ExitCode.INTERRUPTED
    return ExitCode.PARTIAL if tally.counts[STATUS_ERROR] else ExitCode.OK
