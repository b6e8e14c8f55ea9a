"""A small labels file in Fitzpatrick17k's own columns (verbatim rows of its labels.csv), for audit tests."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

PARTITIONS = ("malignant", "benign", "non-neoplastic")


def f17_subset(rows: list[dict[str, str]], out: Path, fsts: Iterable[str], per_cell: int) -> list[dict[str, str]]:
    """Write the first ``per_cell`` rows of every (three_partition, fst) cell to ``out``; returns the rows written.

    ``rows``: Fitzpatrick17k's labels.csv as dicts; ``fsts``: the ``fst`` values wanted ("" = no label)."""
    fsts = tuple(fsts)
    pick = []
    for part in PARTITIONS:
        for fst in fsts:
            pick += [r for r in rows if r["three_partition"] == part and r["fst"] == fst][:per_cell]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))  # the file's own columns, verbatim
        w.writeheader()
        w.writerows(pick)
    return pick
