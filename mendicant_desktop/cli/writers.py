"""Row output for batch runs: CSV or JSON Lines, one flushed row at a time, and ``--resume`` state.

Durability: each row is written with a single ``write`` of a complete line (CSV record or JSON
object) and flushed at once, so a killed run leaves complete rows plus at most one partial last
line; :func:`read_existing` drops such a tail before a resumed run appends to the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

#: ISIC-challenge probability columns and the model class each one reports.
PROB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MEL", "mel"), ("NV", "nv"), ("BCC", "bcc"), ("AKIEC", "akiec"), ("BKL", "bkl"), ("DF", "df"), ("VASC", "vasc"),
)
#: Every batch row has these columns, in this order.
COLUMNS: tuple[str, ...] = (
    "image", "status", "error",
    *(c for c, _ in PROB_COLUMNS),
    "malignancy", "top_class", "risk",
    "fst_estimate", "ita", "skin_fraction", "width", "height", "sha256", "model", "model_sha256",
)
#: Appended after :data:`COLUMNS` with ``--metadata``: the values the model was given.
METADATA_COLUMNS: tuple[str, ...] = ("meta_age", "meta_sex", "meta_site")
#: Appended last with ``--saliency-dir``: the overlay PNG written for the row.
SALIENCY_COLUMNS: tuple[str, ...] = ("saliency_png",)

FLOAT_COLUMNS = frozenset({c for c, _ in PROB_COLUMNS} | {"malignancy", "ita", "skin_fraction", "meta_age"})
INT_COLUMNS = frozenset({"width", "height"})

FORMATS = {".csv": "csv", ".jsonl": "jsonl"}


def columns_for(metadata: bool = False, saliency: bool = False) -> tuple[str, ...]:
    return COLUMNS + (METADATA_COLUMNS if metadata else ()) + (SALIENCY_COLUMNS if saliency else ())


def output_format(path: str | os.PathLike) -> str | None:
    """'csv' or 'jsonl' from the file extension (any case); None when unsupported."""
    return FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())


def clean_text(s: str) -> str:
    """Make any path text encodable as UTF-8 (undecodable bytes in file names become ``\\xNN``)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def path_key(image: str) -> str:
    """How ``--resume`` compares paths: ``data/a.jpg``, ``./data/a.jpg`` and its absolute form are one input."""
    return os.path.normcase(os.path.abspath(image)) if image else ""


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def format_line(row: dict[str, Any], columns: Sequence[str], fmt: str) -> str:
    """One complete output line (with its newline) for ``row``."""
    if fmt == "jsonl":
        return json.dumps({c: _json_value(row.get(c)) for c in columns}, ensure_ascii=False, allow_nan=False) + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([_csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


class RowWriter:
    """Append rows to a CSV/JSONL file, each flushed as soon as it is written."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], fmt: str, *, append: bool = False) -> None:
        self.path = os.fspath(path)
        self.columns = tuple(columns)
        self.fmt = fmt
        self.rows = 0
        new = not append or not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        self._fh = open(self.path, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
        if new and fmt == "csv":
            self._fh.write(format_line({c: c for c in self.columns}, self.columns, fmt))
            self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(format_line(row, self.columns, self.fmt))
        self._fh.flush()
        self.rows += 1

    def close(self) -> None:
        if self._fh.closed:
            return
        self._fh.flush()
        with contextlib.suppress(OSError):
            os.fsync(self._fh.fileno())
        self._fh.close()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OutputFileError(Exception):
    """An existing output file cannot be resumed (other columns, not our format, unreadable)."""


@dataclass
class ExistingRows:
    """What ``--resume`` needs from an existing output file."""

    columns: tuple[str, ...] | None
    done: dict[str, set[str]] = field(default_factory=dict)  # path_key -> sha256s with an ok row for this model
    paths: set[str] = field(default_factory=set)  # path_key of every image that has a row
    rows: int = 0
    duplicates: bool = False  # some image has more than one row
    truncated_tail: bool = False  # a partial last line (killed mid-write) was removed


def _parse_csv(text: str) -> tuple[list[str] | None, list[list[str]]]:
    records = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    if not records:
        return None, []
    return records[0], records[1:]


def _complete_prefix(text: str, fmt: str) -> str:
    """The longest prefix of ``text`` made of complete records (drops a partial last line)."""
    if text.endswith("\n") or not text:
        return text
    cut = text[: text.rfind("\n") + 1]
    if fmt == "csv":
        # A quoted file name may contain a newline: cut further until the CSV parses.
        while cut:
            try:
                _parse_csv(cut)
                return cut
            except csv.Error:
                cut = cut[: cut[:-1].rfind("\n") + 1]
    return cut


def read_existing(path: str | os.PathLike, fmt: str, model_sha256: str) -> ExistingRows:
    """Read an earlier run's output for ``--resume``; a partial last line is cut off the file."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return ExistingRows(columns=None)
    except OSError as exc:
        raise OutputFileError(f"cannot read {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise OutputFileError(f"{p} is not a UTF-8 {fmt.upper()} file written by --batch ({exc})") from None
    good = _complete_prefix(text, fmt)
    out = ExistingRows(columns=None, truncated_tail=len(good) != len(text))
    rows = _iter_rows(good, fmt, p, out)
    seen: set[str] = set()
    for row in rows:
        image = path_key(row.get("image") or "")
        out.rows += 1
        if image in seen:
            out.duplicates = True
        seen.add(image)
        if row.get("status") == "ok" and row.get("model_sha256") == model_sha256 and row.get("sha256"):
            out.done.setdefault(image, set()).add(str(row["sha256"]))
    out.paths = seen
    if out.truncated_tail:
        with open(p, "r+b") as fh:
            fh.truncate(len(good.encode("utf-8")))
    return out


def _iter_rows(text: str, fmt: str, p: str, out: ExistingRows) -> Iterator[dict[str, Any]]:
    if fmt == "csv":
        try:
            header, records = _parse_csv(text)
        except csv.Error as exc:
            raise OutputFileError(f"{p} is not a CSV file written by --batch ({exc})") from None
        if header is None:
            return iter(())
        out.columns = tuple(header)
        if tuple(header[: len(COLUMNS)]) != COLUMNS:
            raise OutputFileError(f"{p} has other columns than a --batch output ({', '.join(header[:5])}, ...)")
        return (dict(zip(header, r, strict=False)) for r in records if r)
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise OutputFileError(f"{p} line {n} is not JSON ({exc.msg})") from None
        if not isinstance(obj, dict) or "image" not in obj or "status" not in obj:
            raise OutputFileError(f"{p} line {n} is not a --batch row")
        if out.columns is None:
            out.columns = tuple(obj)
        rows.append(obj)
    return iter(rows)


def keep_latest_rows(path: str | os.PathLike, fmt: str) -> int:
    """Rewrite ``path`` keeping only the last row of each image (atomically); returns rows removed.

    A resumed run appends a new row for an input whose earlier row was an error (or for another
    model, or older content); the earlier row is then superseded.
    """
    p = os.fspath(path)
    with open(p, encoding="utf-8", newline="") as fh:
        text = fh.read()
    text = _complete_prefix(text, fmt)
    if fmt == "csv":
        header, records = _parse_csv(text)
        if header is None:
            return 0
        keyed = [(path_key(r[0]), r) for r in records if r]
    else:
        header = None
        keyed = [(path_key(json.loads(line).get("image", "")), line) for line in text.splitlines() if line.strip()]
    last = {k: i for i, (k, _) in enumerate(keyed)}
    kept = [rec for i, (k, rec) in enumerate(keyed) if last[k] == i]
    removed = len(keyed) - len(kept)
    if removed == 0:
        return 0
    tmp = os.path.join(os.path.dirname(os.path.abspath(p)), f".{os.path.basename(p)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            if fmt == "csv":
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(header)
                w.writerows(kept)
            else:
                fh.writelines(line + "\n" for line in kept)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return removed


def read_rows(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a batch output (CSV or JSONL by extension) into row dicts (CSV values stay strings)."""
    fmt = output_format(path) or "csv"
    with open(path, encoding="utf-8", newline="") as fh:
        text = fh.read()
    if fmt == "csv":
        header, records = _parse_csv(text)
        return [dict(zip(header or [], r, strict=False)) for r in records if r]
    return [json.loads(line) for line in text.splitlines() if line.strip()]
