"""Row files (``--batch --out``, the GUI's session CSV): CSV or JSON Lines, one flushed row at a time, and ``--resume`` state.

Durability: each row is written with a single ``write`` of a complete line (CSV record or JSON
object) and flushed at once, so a killed run leaves complete rows plus at most one partial last
line; :func:`read_existing` drops such a tail before a resumed run appends to the file.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import OutputFileError
from .rows import COLUMNS, FORMATS, format_line, header_line


def output_format(path: str | os.PathLike) -> str | None:
    """'csv' or 'jsonl' from the file extension (any case); None when unsupported."""
    return FORMATS.get(os.path.splitext(os.fspath(path))[1].lower())


def path_key(image: str) -> str:
    """How ``--resume`` compares paths: ``data/a.jpg``, ``./data/a.jpg`` and its absolute form are one input."""
    return os.path.normcase(os.path.abspath(image)) if image else ""


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
            self._fh.write(header_line(self.columns))
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
