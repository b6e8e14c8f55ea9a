"""The one reader of labels and metadata tables (``--metadata``, ``--audit``'s LABELS.csv, the Audit tab).

Both kinds of file are read by :func:`read_table`: utf-8 (with or without BOM) else cp1252 (Excel on Windows),
comma/semicolon/tab sniffed, header names case-insensitive with spaces and a BOM ignored. Both pick the
image column from the one list :data:`IMAGE_COLUMNS`, so labels and metadata always join on the same column.

Metadata columns (the first match wins):

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

Labels (:func:`read_labels`) add ``malignant`` (0/1, true/false) or ``dx`` (mapped by
:func:`core.audit.dx_to_malignant`) and the skin type ``fst``/``fitspatrick``/``fitzpatrick`` (1-6, I-VI or
empty = use the engine's estimate) and, when present, a lesion category ``three_partition``/``partition``/
``lesion_category`` (malignant / benign / non-neoplastic or inflammatory) for the malignant-vs-benign-neoplasm
comparison. Other columns (Fitzpatrick17k's ``condition``, ``nine_partition``, ``duplicate_group`` ...) are ignored.
Rows that cannot be used are returned with the reason, never dropped.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass

from mendicant_desktop.core.audit import dx_to_malignant, parse_fst, parse_partition
from mendicant_desktop.core.errors import MetadataError
from mendicant_desktop.core.metadata import Metadata, normalize_sex, normalize_site, parse_age

from .errors import LabelsError
from .inputs import resolve_image

#: The image column of labels and metadata files alike (the first present wins).
IMAGE_COLUMNS: tuple[str, ...] = ("image", "image_id", "img_id", "image_name", "isic_id", "file", "filename")
MALIGNANT_COLUMNS: tuple[str, ...] = ("malignant",)
DX_COLUMNS: tuple[str, ...] = ("dx",)
FST_COLUMNS: tuple[str, ...] = ("fst", "fitspatrick", "fitzpatrick")
#: A lesion category (malignant / benign / non-neoplastic), as Fitzpatrick17k's ``three_partition``: with it the
#: audit adds malignant vs benign neoplasms (non-neoplastic conditions left out) beside malignant vs the rest.
PARTITION_COLUMNS: tuple[str, ...] = ("three_partition", "partition", "lesion_category")
AGE_COLUMNS: tuple[str, ...] = ("age", "age_approx")
SEX_COLUMNS: tuple[str, ...] = ("sex", "gender")
SITE_COLUMNS: tuple[str, ...] = (
    "site", "localization", "region", "anatom_site_general", "anatom_site_general_challenge",
)
#: How much of a file the delimiter sniffer reads.
_SNIFF_CHARS = 8192
_TRUE = frozenset({"1", "1.0", "true", "yes", "y", "malignant"})
_FALSE = frozenset({"0", "0.0", "false", "no", "n", "benign"})


def decode_table_bytes(raw: bytes) -> str:
    """utf-8 (a BOM dropped), else cp1252 as Excel on Windows writes it."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace")


def sniff_dialect(sample: str) -> type[csv.Dialect] | csv.Dialect:
    """Comma, semicolon or tab separated: whatever the sample shows; plain CSV when unsure."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t")
    except csv.Error:
        return csv.excel


class Table:
    """A parsed header plus a row reader: ``pick`` finds a column, ``cell`` reads it (stripped)."""

    def __init__(self, text: str, source: str) -> None:
        text = text.lstrip("\ufeff")
        self.source = source
        self._reader = csv.reader(io.StringIO(text, newline=""), sniff_dialect(text[:_SNIFF_CHARS]))
        self.header = next(self._reader)  # StopIteration / csv.Error: handled by the callers
        self.names = [h.strip().lower().lstrip("\ufeff") for h in self.header]

    def pick(self, names: Sequence[str]) -> int | None:
        """Index of the first of ``names`` in the header, or None."""
        for n in names:
            if n in self.names:
                return self.names.index(n)
        return None

    def has_any(self, names: Sequence[str]) -> bool:
        return any(n in self.names for n in names)

    @staticmethod
    def cell(row: list[str], i: int | None) -> str:
        return row[i].strip() if i is not None and i < len(row) else ""

    def rows(self):
        """(line number, cells) of every non-blank row. Raises csv.Error on malformed CSV."""
        for row in self._reader:
            if row and any(c.strip() for c in row):
                yield self._reader.line_num, row

    @property
    def line(self) -> int:
        return self._reader.line_num


def parse_table(text: str, source: str, error: type[Exception]) -> Table:
    """The header of ``text``; ``error(message)`` for an empty or unreadable file."""
    try:
        return Table(text, source)
    except StopIteration:
        raise error(f"{source}: the file is empty") from None
    except csv.Error as exc:
        raise error(f"{source}: not a readable CSV file ({exc})") from None


def read_table_text(path: str | os.PathLike, error: type[Exception], what: str) -> str:
    """The text of a table file; ``error`` names ``what`` (e.g. "labels file") and the OS reason."""
    p = os.fspath(path)
    try:
        with open(p, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise error(f"cannot read {what} {p}: file not found") from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a folder") from None
    except OSError as exc:
        raise error(f"cannot read {what} {p}: {exc.strerror or exc}") from None
    return decode_table_bytes(raw)


@dataclass(frozen=True)
class MetaRecord:
    """One metadata row: the parsed :class:`Metadata`, or the reason it is invalid (bad age)."""

    metadata: Metadata | None
    error: str | None = None
    line: int = 0


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


def parse_metadata_text(text: str, source: str = "metadata") -> MetadataTable:
    """Parse CSV text (comma, semicolon or tab separated) into a :class:`MetadataTable`."""
    t = parse_table(text, source, MetadataError)
    i_img = t.pick(IMAGE_COLUMNS)
    if i_img is None:
        raise MetadataError(
            f"{source}: no image column; expected one of {', '.join(IMAGE_COLUMNS)} (found {', '.join(t.header)})"
        )
    i_age, i_sex, i_site = t.pick(AGE_COLUMNS), t.pick(SEX_COLUMNS), t.pick(SITE_COLUMNS)
    table = MetadataTable(source)
    try:
        for line, row in t.rows():
            sex, site = normalize_sex(t.cell(row, i_sex) or None), normalize_site(t.cell(row, i_site) or None)
            try:
                rec = MetaRecord(Metadata(age=parse_age(t.cell(row, i_age) or None), sex=sex, site=site), None, line)
            except MetadataError as exc:
                rec = MetaRecord(None, f"invalid metadata on line {line} of {source}: {exc}", line)
            table.add(t.cell(row, i_img), rec)
    except csv.Error as exc:
        raise MetadataError(f"{source}: malformed CSV near line {t.line} ({exc})") from None
    return table


def load_metadata_csv(path: str | os.PathLike) -> MetadataTable:
    """Read ``--metadata CSV``. Raises :class:`MetadataError` for unreadable or unusable files.

    A row with an invalid age does not stop the run: its image gets an error row naming the line.
    """
    text = read_table_text(path, MetadataError, "metadata file")
    return parse_metadata_text(text, os.path.basename(os.fspath(path)))


# --------------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRow:
    """One usable labels row."""

    line: int
    image: str  # as written in the labels file
    path: str  # resolved under the images folder
    malignant: int
    fst: str  # 'I'..'VI' or 'unknown' (no label: the engine's estimate is used)
    partition: str = ""  # 'malignant' / 'benign' / 'non-neoplastic' from a PARTITION_COLUMNS column, else ''


@dataclass(frozen=True)
class Labels:
    """A labels file: its usable rows, the unusable ones with their reason, and whether it has metadata."""

    rows: tuple[LabelRow, ...]
    skipped: tuple[tuple[str, str], ...]  # (image or "(line N)", reason)
    has_meta_columns: bool
    path: str = ""
    has_partition: bool = False  # the file has a lesion-category column (PARTITION_COLUMNS)


def parse_malignant(value: str) -> int | None:
    """1/0 from a ``malignant`` cell (0/1, true/false, yes/no, malignant/benign); None when unreadable."""
    v = value.strip().lower()
    if v in _TRUE:
        return 1
    if v in _FALSE:
        return 0
    return None


class _LabelColumns:
    def __init__(self, t: Table, source: str) -> None:
        self.t = t
        self.image = t.pick(IMAGE_COLUMNS)
        if self.image is None:
            raise LabelsError(f"labels file {source}: no image column; expected one of {', '.join(IMAGE_COLUMNS)} "
                              f"(found {', '.join(t.header)})")
        self.mal, self.dx, self.fst = t.pick(MALIGNANT_COLUMNS), t.pick(DX_COLUMNS), t.pick(FST_COLUMNS)
        self.partition = t.pick(PARTITION_COLUMNS)
        if self.mal is None and self.dx is None:
            raise LabelsError(f"labels file {source}: needs a 'malignant' (0/1) or a 'dx' column "
                              f"(found {', '.join(t.header)})")

    def label(self, row: list[str], line: int) -> tuple[int | None, str]:
        """(malignant, reason when None) from the malignant column, else the dx column."""
        cell = self.t.cell
        mal_text = cell(row, self.mal)
        mal = parse_malignant(mal_text) if self.mal is not None else None
        if mal is None and mal_text and (self.dx is None or dx_to_malignant(cell(row, self.dx)) is None):
            return None, f"line {line}: malignant must be 0 or 1, got {mal_text!r}"
        if mal is None and self.dx is not None:
            mal = dx_to_malignant(cell(row, self.dx))
        if mal is None:
            dx = cell(row, self.dx)
            return None, f"line {line}: " + (f"unknown diagnosis code {dx!r}" if dx else "no malignant/dx label")
        return mal, ""


def parse_labels_text(text: str, images_dir: str | os.PathLike, source: str = "labels") -> Labels:
    """Parse labels CSV text; image names resolve under ``images_dir`` (see :func:`inputs.resolve_image`)."""
    t = parse_table(text, f"labels file {source}", LabelsError)
    cols = _LabelColumns(t, source)
    rows: list[LabelRow] = []
    skipped: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    try:
        for line, row in t.rows():
            image = t.cell(row, cols.image)
            if not image:
                skipped.append((f"(line {line})", "no image name"))
                continue
            mal, why = cols.label(row, line)
            if mal is None:
                skipped.append((image, why))
                continue
            try:
                fst = parse_fst(t.cell(row, cols.fst))
            except ValueError as exc:
                skipped.append((image, f"line {line}: {exc}"))
                continue
            key = image.replace("\\", "/")
            if key in seen:
                skipped.append((image, f"line {line}: duplicate of line {seen[key]} (only the first is audited)"))
                continue
            seen[key] = line
            part = parse_partition(t.cell(row, cols.partition)) if cols.partition is not None else ""
            rows.append(LabelRow(line, image, resolve_image(images_dir, image), mal, fst, part))
    except csv.Error as exc:
        raise LabelsError(f"labels file {source}: malformed CSV near line {t.line} ({exc})") from None
    has_meta = t.has_any(AGE_COLUMNS + SEX_COLUMNS + SITE_COLUMNS)
    return Labels(tuple(rows), tuple(skipped), has_meta, source, cols.partition is not None)


def read_labels(path: str | os.PathLike, images_dir: str | os.PathLike) -> Labels:
    """Read LABELS.csv. Raises :class:`LabelsError` for a file that cannot be a labels file at all."""
    p = os.fspath(path)
    return parse_labels_text(read_table_text(p, LabelsError, "labels file"), images_dir, p)
