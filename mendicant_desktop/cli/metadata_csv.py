"""``--metadata CSV``: patient metadata joined to images by file name.

Accepted column names (case-insensitive, surrounding spaces ignored; the first match wins):

==========  ==========================================================================
meaning     accepted names
==========  ==========================================================================
image       ``image``, ``image_id`` (HAM10000), ``img_id`` (PAD-UFES-20), ``image_name``
            (ISIC 2020), ``isic_id`` (ISIC Archive), ``file``, ``filename``
age         ``age``, ``age_approx`` (ISIC)
sex         ``sex``, ``gender`` (PAD-UFES-20)
site        ``site``, ``localization`` (HAM10000), ``region`` (PAD-UFES-20),
            ``anatom_site_general``, ``anatom_site_general_challenge`` (ISIC)
==========  ==========================================================================

Only the image column is required. Values are mapped by :mod:`mendicant_desktop.core.metadata`
(``normalize_sex``, ``normalize_site`` and its ``SITE_ALIASES`` table); anything unrecognised becomes
``unknown``. An image matches a row whose key equals its file name (``ISIC_0001.jpg``), or its name
without extension (``ISIC_0001``, as HAM10000 writes ``image_id``), or either of them ignoring case.
A key may also hold a relative path; only its last component is used.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass

from mendicant_desktop.core.errors import MetadataError
from mendicant_desktop.core.metadata import Metadata, normalize_sex, normalize_site, parse_age

IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_id", "img_id", "image_name", "isic_id", "file", "filename")
AGE_COLUMNS: tuple[str, ...] = ("age", "age_approx")
SEX_COLUMNS: tuple[str, ...] = ("sex", "gender")
SITE_COLUMNS: tuple[str, ...] = (
    "site", "localization", "region", "anatom_site_general", "anatom_site_general_challenge",
)


@dataclass(frozen=True)
class MetaRecord:
    """One metadata row: the parsed :class:`Metadata`, or the reason it is invalid (bad age)."""

    metadata: Metadata | None
    error: str | None = None
    line: int = 0


def _pick(header: list[str], names: tuple[str, ...]) -> int | None:
    norm = [h.strip().lower().lstrip("\ufeff") for h in header]
    for n in names:
        if n in norm:
            return norm.index(n)
    return None


def _key(name: str) -> str:
    name = name.strip().replace("\\", "/")
    return name.rsplit("/", 1)[-1]


class MetadataTable:
    """Metadata keyed by image file name; ``lookup(path)`` finds an image's record (or None)."""

    def __init__(self, source: str = "") -> None:
        self.source = source
        self._exact: dict[str, MetaRecord] = {}
        self._folded: dict[str, MetaRecord | None] = {}  # None: ambiguous once case is ignored

    def __len__(self) -> int:
        return len(self._exact)

    def add(self, key: str, record: MetaRecord) -> None:
        key = _key(key)
        if not key:
            return
        old = self._exact.get(key)
        if old is not None and old.metadata != record.metadata:
            raise MetadataError(
                f"{self.source}: image {key!r} appears on lines {old.line} and {record.line} with different values"
            )
        self._exact.setdefault(key, record)
        folded = key.casefold()
        prev = self._folded.get(folded, record)
        self._folded[folded] = record if prev is record or (prev and prev.metadata == record.metadata) else None

    def lookup(self, path: str) -> MetaRecord | None:
        name = os.path.basename(path)
        stem = os.path.splitext(name)[0]
        for k in (name, stem):
            rec = self._exact.get(k)
            if rec is not None:
                return rec
        for k in (name, stem):
            rec = self._folded.get(k.casefold())
            if rec is not None:
                return rec
        return None


def sniff_dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """Comma, semicolon or tab separated: whatever the sample shows; plain CSV when unsure."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel


def parse_metadata_text(text: str, source: str = "metadata") -> MetadataTable:
    """Parse CSV text (comma, semicolon or tab separated) into a :class:`MetadataTable`."""
    text = text.lstrip("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), sniff_dialect(text[:8192]))
    try:
        header = next(reader)
    except StopIteration:
        raise MetadataError(f"{source}: the file is empty") from None
    except csv.Error as exc:
        raise MetadataError(f"{source}: not a readable CSV file ({exc})") from None
    i_img = _pick(header, IMAGE_COLUMNS)
    if i_img is None:
        raise MetadataError(
            f"{source}: no image column; expected one of {', '.join(IMAGE_COLUMNS)} (found {', '.join(header)})"
        )
    i_age, i_sex, i_site = _pick(header, AGE_COLUMNS), _pick(header, SEX_COLUMNS), _pick(header, SITE_COLUMNS)
    table = MetadataTable(source)

    def cell(row: list[str], i: int | None) -> str | None:
        return row[i] if i is not None and i < len(row) else None

    try:
        for row in reader:
            line = reader.line_num
            if not row or not any(c.strip() for c in row):
                continue
            key = cell(row, i_img) or ""
            sex, site = normalize_sex(cell(row, i_sex)), normalize_site(cell(row, i_site))
            try:
                rec = MetaRecord(Metadata(age=parse_age(cell(row, i_age)), sex=sex, site=site), None, line)
            except MetadataError as exc:
                rec = MetaRecord(None, f"invalid metadata on line {line} of {source}: {exc}", line)
            table.add(key, rec)
    except csv.Error as exc:
        raise MetadataError(f"{source}: malformed CSV near line {reader.line_num} ({exc})") from None
    return table


def load_metadata_csv(path: str | os.PathLike) -> MetadataTable:
    """Read ``--metadata CSV``. Raises :class:`MetadataError` for unreadable or unusable files.

    A row with an invalid age does not stop the run: its image gets an error row naming the line.
    """
    p = os.fspath(path)
    name = os.path.basename(p)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise MetadataError(f"cannot read metadata file {p}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("cp1252", errors="replace")  # Excel exports on Windows
    return parse_metadata_text(text, name)
