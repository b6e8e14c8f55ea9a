"""The one row schema and its formatter: ``--batch`` output, the GUI's session CSV and the server's rows.

A row is a dict keyed by column name with typed values (floats rounded once, here); :func:`format_line`
turns it into one CSV or JSON Lines line. ``--batch`` and the GUI's export both build their rows with
:func:`ok_row` / :func:`error_row` and write them with :func:`format_line`, so the same image and metadata
give the same cells in both. The columns are documented in ``docs/batch.md``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.results import CLASS_NAMES, Prediction, SkinToneEstimate

#: ISIC-challenge probability columns and the model class each one reports.
PROB_COLUMNS: tuple[tuple[str, str], ...] = (
    ("MEL", "mel"), ("NV", "nv"), ("BCC", "bcc"), ("AKIEC", "akiec"), ("BKL", "bkl"), ("DF", "df"), ("VASC", "vasc"),
)
assert sorted(c for _, c in PROB_COLUMNS) == sorted(CLASS_NAMES)
#: Every row has these columns, in this order.
COLUMNS: tuple[str, ...] = (
    "image", "status", "error",
    *(c for c, _ in PROB_COLUMNS),
    "malignancy", "top_class", "risk",
    "fst_estimate", "ita", "skin_fraction", "width", "height", "sha256", "model", "model_sha256", "warnings",
)
#: Appended after :data:`COLUMNS` when metadata is given: the values the model was given.
METADATA_COLUMNS: tuple[str, ...] = ("meta_age", "meta_sex", "meta_site")
#: The threshold a row's ``risk`` was judged at, the model card's default and where the threshold came from
#: ("model", "site": IT's site file, "user": changed in Settings): the GUI's session CSV carries them, so a
#: non-default threshold is visible in every row (``--batch`` always judges at the card's threshold).
THRESHOLD_COLUMNS: tuple[str, ...] = ("threshold", "threshold_default", "threshold_source")
#: Threshold sources.
THRESHOLD_SOURCES: tuple[str, ...] = ("model", "site", "user")
#: Appended last with ``--saliency-dir``: the overlay PNG written for the row.
SALIENCY_COLUMNS: tuple[str, ...] = ("saliency_png",)

FLOAT_COLUMNS = frozenset({c for c, _ in PROB_COLUMNS} | {"malignancy", "ita", "skin_fraction", "meta_age"})
INT_COLUMNS = frozenset({"width", "height"})

STATUS_OK = "ok"
STATUS_ERROR = "error"
#: Decimal places of the probability and malignancy cells.
PROB_DIGITS = 8
ITA_DIGITS = 2
SKIN_FRACTION_DIGITS = 4
#: Joins several warnings in one cell (a warning never contains it).
WARNING_SEPARATOR = " | "

#: Row formats by file extension.
FORMATS = {".csv": "csv", ".jsonl": "jsonl"}

_ISIC_CODE = {model: isic for isic, model in PROB_COLUMNS}


def isic_code(class_name: str) -> str:
    """The ISIC column name of a model class: ``mel`` -> ``MEL`` (the ``top_class`` cell)."""
    return _ISIC_CODE.get(class_name, class_name.upper())


def columns_for(metadata: bool = False, saliency: bool = False) -> tuple[str, ...]:
    return COLUMNS + (METADATA_COLUMNS if metadata else ()) + (SALIENCY_COLUMNS if saliency else ())


def clean_text(s: str) -> str:
    """Make any path text encodable as UTF-8 (undecodable bytes in file names become ``\\xNN``)."""
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def _round(v: float | None, nd: int) -> float | None:
    return None if v is None else round(float(v), nd)


def _base(image: str, columns: Iterable[str], model_name: str, model_sha256: str) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update(image=clean_text(image), model=model_name, model_sha256=model_sha256)
    return row


def _meta_cells(row: dict[str, Any], meta: Metadata | None) -> None:
    if "meta_sex" in row and meta is not None:
        row.update(meta_age=meta.age, meta_sex=meta.sex, meta_site=meta.site)


def ok_row(
    image: str,
    prediction: Prediction,
    *,
    sha256: str,
    width: int,
    height: int,
    skin: SkinToneEstimate | None,
    warnings: Sequence[str] = (),
    metadata: Metadata | None = None,
    columns: Iterable[str] = COLUMNS,
) -> dict[str, Any]:
    """The row of a scored image. ``skin`` None (estimation switched off) leaves the skin cells empty."""
    row = _base(image, columns, prediction.model_name, prediction.model_sha256)
    row.update(status=STATUS_OK, error="")
    for isic, cls in PROB_COLUMNS:
        row[isic] = round(prediction.prob(cls), PROB_DIGITS)
    row.update(
        malignancy=round(prediction.malignancy, PROB_DIGITS),
        top_class=isic_code(prediction.top_class),
        risk=prediction.risk,
        width=width,
        height=height,
        sha256=sha256,
        warnings=WARNING_SEPARATOR.join(warnings),
    )
    if skin is not None:
        row.update(fst_estimate=skin.fst, ita=_round(skin.ita, ITA_DIGITS),
                   skin_fraction=_round(skin.skin_fraction, SKIN_FRACTION_DIGITS))
    _meta_cells(row, metadata)
    return row


def error_row(
    image: str,
    reason: str,
    *,
    model_name: str,
    model_sha256: str,
    sha256: str | None = None,
    width: int | None = None,
    height: int | None = None,
    metadata: Metadata | None = None,
    columns: Iterable[str] = COLUMNS,
    status: str = STATUS_ERROR,
) -> dict[str, Any]:
    """The row of an input that could not be scored (``status`` other than error: the GUI's queued cases)."""
    row = _base(image, columns, model_name, model_sha256)
    row.update(status=status, error=reason, sha256=sha256, width=width, height=height)
    _meta_cells(row, metadata)
    return row


def threshold_cells(threshold: float, model_default: float | None, source: str) -> dict[str, Any]:
    """The :data:`THRESHOLD_COLUMNS` cells: a threshold equal to the card's is "model" whatever ``source`` says."""
    if model_default is not None and abs(threshold - model_default) < 1e-12:
        source = "model"
    elif source not in THRESHOLD_SOURCES or source == "model":
        source = "user" if model_default is not None else source  # differs from the card: never called the default
    return {"threshold": threshold, "threshold_default": model_default, "threshold_source": source}


def json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return str(v)


def format_line(row: Mapping[str, Any], columns: Sequence[str], fmt: str) -> str:
    """One complete output line (with its newline) for ``row``: ``fmt`` is 'csv' or 'jsonl'."""
    if fmt == "jsonl":
        return json.dumps({c: json_value(row.get(c)) for c in columns}, ensure_ascii=False, allow_nan=False) + "\n"
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([csv_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def header_line(columns: Sequence[str]) -> str:
    """The CSV header line."""
    return format_line({c: c for c in columns}, columns, "csv")
