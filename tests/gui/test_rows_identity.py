"""The GUI shows what a batch row says: a session-CSV row and a ``--batch`` row for the same image and metadata
are identical in every column they share (the batch columns and the metadata columns), warnings included."""

from __future__ import annotations

import csv

from PIL import Image

from mendicant_desktop.app.rows import COLUMNS, METADATA_COLUMNS
from mendicant_desktop.cli import ExitCode
from mendicant_desktop.cli import batch as batch_mod
from mendicant_desktop.core.metadata import Metadata
from tests.gui.conftest import lesion_image, wait_all_scored


def _rows(path) -> dict[str, dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return {r["image"]: r for r in csv.DictReader(fh)}


def test_session_csv_rows_equal_batch_rows(qtbot, window, tmp_path, tiny_bundle):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    big = lesion_image(imgs / "lesion.jpg", size=(640, 480), seed=4)
    small = imgs / "small.png"
    Image.open(lesion_image(tmp_path / "s.jpg", size=(100, 90), seed=5)).save(small)  # "too small" warning
    broken = imgs / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00garbage" * 40)  # readable, not decodable: sha256 known
    metas = {big: Metadata(age=63, sex="male", site="trunk"), small: Metadata(age=30, sex="female", site="arm"),
             broken: Metadata(age=50, sex="female", site="leg-or-genital")}
    (tmp_path / "meta.csv").write_text(
        "image,age,sex,site\nlesion.jpg,63,male,trunk\nsmall.png,30,female,arm\nbroken.jpg,50,female,leg\n",
        encoding="utf-8")

    window.add_paths([str(p) for p in metas])
    wait_all_scored(qtbot, window)
    for case in window.assess.model.cases:
        window.assess.set_metadata(case, metas[case.path])
    # set_metadata marks a scored case "scoring" at once and re-scores it in the background
    qtbot.waitUntil(lambda: all(c.status in ("done", "error") for c in window.assess.model.cases), timeout=20_000)
    gui = _rows(window.export_csv(str(tmp_path / "session.csv")))

    out = tmp_path / "batch.csv"
    threads = window.services.engine.threads  # the same ONNX Runtime thread count, so the same float sums
    rc = batch_mod.main(["--batch", *[str(p) for p in metas], "--out", str(out), "--metadata",
                         str(tmp_path / "meta.csv"), "--model", str(tiny_bundle), "--threads", str(threads),
                         "--quiet"])
    assert rc == ExitCode.PARTIAL  # the broken file
    batch = _rows(out)

    assert set(gui) == set(batch) == {str(p) for p in metas}
    for image, brow in batch.items():
        grow = gui[image]
        assert {c: grow[c] for c in COLUMNS + METADATA_COLUMNS} == {c: brow[c] for c in COLUMNS + METADATA_COLUMNS}
    assert "Image too small" in batch[str(small)]["warnings"]
    assert batch[str(big)]["status"] == "ok" and batch[str(big)]["top_class"].isupper()
    assert batch[str(broken)]["status"] == "error" and len(batch[str(broken)]["sha256"]) == 64
    assert gui[str(big)]["meta_age"] == "63.0" and gui[str(big)]["fst_used"] == gui[str(big)]["fst_estimate"]
