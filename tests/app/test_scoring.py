"""In-process tests of the app layer's scoring stream (discovery, metadata join, writers, score_paths) on the tiny model."""

from __future__ import annotations

import csv
import io
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mendicant_desktop.app import scoring
from mendicant_desktop.app.inputs import InputItem, count_inputs, iter_inputs, looks_like_image
from mendicant_desktop.app.output import RowWriter, keep_latest_rows, path_key, read_existing, read_rows
from mendicant_desktop.app.rows import COLUMNS, columns_for, format_line
from mendicant_desktop.app.scoring import iter_scored, score_paths
from mendicant_desktop.app.tables import load_metadata_csv, parse_metadata_text
from mendicant_desktop.core.bundle import ModelBundle
from mendicant_desktop.core.errors import MetadataError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata
from mendicant_desktop.core.preprocess import load_image
from mendicant_desktop.core.skintone import estimate_skin_tone
from tests.cli.test_batch_fixtures import IS_ROOT, jpeg_bytes, make_input_folder, photo

PROBS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


@pytest.fixture(scope="module")
def engine(tiny_bundle) -> Engine:
    return Engine(ModelBundle.load(tiny_bundle), threads=1)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("mixed")
    return root, make_input_folder(root, big=False)


def rel(root: Path, p: str) -> str:
    return os.path.relpath(p, root)


# ----------------------------------------------------------------------------- discovery


def test_walk_finds_each_input_once_and_survives_symlink_loops(mixed):
    root, exp = mixed
    items = list(iter_inputs([root]))
    found = [rel(root, i.path) for i in items]
    assert sorted(found) == sorted(exp)  # no notes.txt, no hidden file, nothing twice
    assert len(found) == len(set(found))
    errors = {rel(root, i.path): i.error for i in items if i.error}
    assert "folder named like an image" in errors["folder.jpg"]
    assert "symbolic link" in errors["self_loop.jpg"]
    assert count_inputs([root]) == len(items)


def test_overlapping_paths_and_repeated_files_are_not_visited_twice(mixed):
    root, exp = mixed
    paths = [root / "cmyk.jpg", root, root / "folder.jpg", root / "cmyk.jpg", root / "loop"]
    found = [rel(root, i.path) for i in iter_inputs(paths)]
    assert len(found) == len(set(found)) == len(exp)
    assert found[0] == "cmyk.jpg"


def test_explicit_paths_are_always_inputs(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    items = list(iter_inputs([tmp_path / "notes.txt", tmp_path / "missing.jpg"]))
    assert [i.error for i in items] == [None, "file not found"]


def test_signatures():
    assert looks_like_image(jpeg_bytes(photo(8, 8)))
    assert not looks_like_image(b"image,age,sex\n")
    assert not looks_like_image(b"BM but just text here, nothing else")


# ----------------------------------------------------------------------------- metadata


def test_metadata_names_and_spellings(tmp_path):
    ours = parse_metadata_text("image,age,sex,site\na.jpg,50,F,Upper Extremity\nb.jpg,,m,scalp\n")
    assert ours.lookup("/x/a.jpg").metadata == Metadata(50, "female", "arm")
    assert ours.lookup("b.jpg").metadata == Metadata(None, "male", "head-or-neck")
    ham = parse_metadata_text("lesion_id,image_id,dx,dx_type,age,sex,localization\n"
                              "HAM_1,ISIC_0024306,nv,follow_up,45.0,male,lower extremity\n")
    assert ham.lookup("dir/ISIC_0024306.jpg").metadata == Metadata(45, "male", "leg-or-genital")
    pad = parse_metadata_text("patient_id;img_id;age;gender;region\nPAT_1;PAT_1_2_3.png;60;FEMALE;FOREARM\n")
    assert pad.lookup("PAT_1_2_3.png").metadata == Metadata(60, "female", "arm")
    assert pad.lookup("pat_1_2_3.PNG").metadata.site == "arm"  # case ignored as a fallback
    assert pad.lookup("other.png") is None
    weird = parse_metadata_text("\ufeffImage , Sex, Site\nz.jpg,x,moon\n")
    assert weird.lookup("z.jpg").metadata == Metadata(None, "unknown", "unknown")


def test_metadata_bad_age_is_per_image_and_conflicts_are_config_errors(tmp_path):
    t = parse_metadata_text("image,age\na.jpg,abc\nb.jpg,30\n")
    assert "line 2" in t.lookup("a.jpg").error and t.lookup("b.jpg").error is None
    with pytest.raises(MetadataError, match="different values"):
        parse_metadata_text("image,age\na.jpg,30\na.jpg,40\n")
    with pytest.raises(MetadataError, match="no image column"):
        parse_metadata_text("name,age\na.jpg,30\n")
    with pytest.raises(MetadataError, match="cannot read"):
        load_metadata_csv(tmp_path / "missing.csv")


# ----------------------------------------------------------------------------- writers / resume state


def test_writer_rows_and_partial_tail_recovery(tmp_path):
    cols = columns_for()
    for fmt in ("csv", "jsonl"):
        out = tmp_path / f"o.{fmt}"
        with RowWriter(out, cols, fmt) as w:
            w.write({"image": "a\nb.jpg", "status": "ok", "sha256": "s1", "model_sha256": "m", "MEL": 0.5})
            w.write({"image": "c.jpg", "status": "error", "error": "bad", "model_sha256": "m"})
        good = out.read_bytes()
        out.write_bytes(good + format_line({"image": "d, \"q\".jpg", "status": "ok"}, cols, fmt).encode()[:-9])
        ex = read_existing(out, fmt, "m")
        assert ex.truncated_tail and out.read_bytes() == good
        assert ex.done == {path_key("a\nb.jpg"): {"s1"}} and ex.paths == {path_key("a\nb.jpg"), path_key("c.jpg")}
        assert not ex.duplicates
        rows = read_rows(out)
        assert rows[0]["image"] == "a\nb.jpg" and rows[1]["error"] == "bad"
        with RowWriter(out, cols, fmt, append=True) as w:
            w.write({"image": "c.jpg", "status": "ok", "sha256": "s2", "model_sha256": "m"})
        assert keep_latest_rows(out, fmt) == 1
        rows = read_rows(out)
        assert [(r["image"], r["status"]) for r in rows] == [("a\nb.jpg", "ok"), ("c.jpg", "ok")]
        assert (tuple(rows[0]) == COLUMNS) if fmt == "csv" else (list(json.loads(out.read_text().splitlines()[0])) == list(COLUMNS))


# ----------------------------------------------------------------------------- scoring


def test_score_paths_matches_the_engine_and_reports_every_bad_input(mixed, engine):
    root, exp = mixed
    rows = list(score_paths(iter_inputs([root]), engine, workers=2, batch_size=4))
    assert [r["image"] for r in rows] == [i.path for i in iter_inputs([root])]  # input order kept
    got = {rel(root, r["image"]): r for r in rows}
    assert {k: r["status"] for k, r in got.items()} == exp
    for r in rows:
        assert list(r) == list(COLUMNS)
        if r["status"] == "ok":
            assert r["error"] == "" and abs(sum(r[c] for c in PROBS) - 1) < 1e-5
            assert r["top_class"] in PROBS and r["risk"] in ("low", "high")
            assert r["model"] == "tiny-test-model" and len(r["sha256"]) == 64
        else:
            assert r["error"] and r["MEL"] is None
    # same numbers as the engine's own decode + predict path, and the core skin-tone estimate
    rgb = load_image(root / "cmyk.jpg")
    pred = engine.predict(rgb, cam=False)[0]
    r = got["cmyk.jpg"]
    assert r["MEL"] == pytest.approx(pred.prob("mel"), abs=1e-6)
    assert r["malignancy"] == pytest.approx(pred.malignancy, abs=1e-6)
    assert r["fst_estimate"] == estimate_skin_tone(rgb).fst
    assert (r["width"], r["height"]) == (160, 120)
    assert (got["rotated_exif.jpg"]["width"], got["rotated_exif.jpg"]["height"]) == (80, 120)
    reasons = {k: got[k]["error"] for k in ("empty.jpg", "page.jpg", "bomb.png", "truncated.jpg")}
    assert "empty" in reasons["empty.jpg"]
    assert "not a recognised image" in reasons["page.jpg"]
    assert "too large" in reasons["bomb.png"]
    assert "truncated" in reasons["truncated.jpg"] or "corrupt" in reasons["truncated.jpg"]


def test_vanished_unreadable_and_skipped_inputs(tmp_path, engine, monkeypatch):
    names = []
    for i in range(5):
        p = tmp_path / f"img{i}.jpg"
        p.write_bytes(jpeg_bytes(photo(64, 64, i)))
        names.append(p)

    def vanishing():
        for item in iter_inputs([tmp_path]):
            if item.path.endswith("img1.jpg"):
                os.unlink(item.path)  # removed after it was found, before it was read
            yield item

    real_open = os.open

    def fake_open(file, flags, *a, **k):  # root reads chmod-000 files: simulate the refusal
        if str(file).endswith("img2.jpg"):
            raise PermissionError(13, "Permission denied")
        return real_open(file, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    first = list(score_paths(vanishing(), engine, workers=1, batch_size=2))
    st = {os.path.basename(r["image"]): (r["status"], r["error"]) for r in first}
    assert st["img1.jpg"] == ("error", "file not found (missing or removed)")
    assert st["img2.jpg"] == ("error", "permission denied")
    assert st["img0.jpg"][0] == st["img3.jpg"][0] == "ok"
    skip_sha = {r["sha256"] for r in first if r["image"].endswith(("img0.jpg", "img4.jpg"))}
    seen = list(iter_scored([names[0], names[3], names[4]], engine, skip=lambda p, s: s in skip_sha))
    assert [s.skipped for s in seen] == [True, False, True]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_named_like_an_image_does_not_hang(tmp_path, engine):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    assert [i.path for i in iter_inputs([tmp_path])] == []  # special files are not inputs in folders
    (item,) = iter_inputs([fifo])
    assert item.error == "not a regular file"
    (row,) = score_paths([fifo], engine)  # and a raw path is refused without blocking on open
    assert (row["status"], row["error"]) == ("error", "not a regular file")


@pytest.mark.skipif(IS_ROOT, reason="running as root: chmod 000 cannot make a file unreadable")
def test_chmod_000_file_is_an_error_row(tmp_path, engine):
    p = tmp_path / "locked.jpg"
    p.write_bytes(jpeg_bytes(photo(32, 32)))
    p.chmod(0)
    try:
        (row,) = score_paths([p], engine)
    finally:
        p.chmod(0o644)
    assert (row["status"], row["error"]) == ("error", "permission denied")


def test_metadata_join_changes_the_scores_like_the_engine(tmp_path, engine):
    a = tmp_path / "PAT_1_2_3.png"
    Image.fromarray(photo(90, 70)).save(a)
    b = tmp_path / "nometa.png"
    Image.fromarray(photo(90, 70)).save(b)
    c = tmp_path / "badage.png"
    Image.fromarray(photo(90, 70)).save(c)
    table = parse_metadata_text("img_id,age,gender,region\nPAT_1_2_3.png,70,MALE,BACK\nbadage.png,old,F,ARM\n")
    rows = list(score_paths([a, b, c], engine, metadata=table))
    assert [r["status"] for r in rows] == ["ok", "ok", "error"]
    assert (rows[0]["meta_age"], rows[0]["meta_sex"], rows[0]["meta_site"]) == (70.0, "male", "trunk")
    assert rows[1]["meta_sex"] is None and "age" in rows[2]["error"]
    rgb = load_image(a)
    with_meta = engine.predict(rgb, Metadata(70, "male", "trunk"), cam=False)[0]
    without = engine.predict(rgb, cam=False)[0]
    assert rows[0]["MEL"] == pytest.approx(with_meta.prob("mel"), abs=1e-6)
    assert rows[1]["MEL"] == pytest.approx(without.prob("mel"), abs=1e-6)
    assert abs(with_meta.prob("mel") - without.prob("mel")) > 1e-4


def test_saliency_pngs_use_the_core_overlay(tmp_path, engine):
    img = tmp_path / "a b.jpg"
    img.write_bytes(jpeg_bytes(photo(2000, 1500)))
    rows = list(score_paths([img], engine, saliency_dir=tmp_path / "sal"))
    png = Path(rows[0]["saliency_png"])
    assert png.parent == tmp_path / "sal" and png.name.startswith("a b_")
    with Image.open(png) as im:
        assert im.format == "PNG" and scoring.SALIENCY_MAX_SIDE // 2 < max(im.size) <= scoring.SALIENCY_MAX_SIDE


def test_stop_event_ends_the_stream_early(tmp_path, engine):
    p = tmp_path / "x.jpg"
    p.write_bytes(jpeg_bytes(photo(64, 64)))
    stop = threading.Event()
    out = []
    for s in iter_scored((InputItem(str(p)) for _ in range(10_000)), engine, stop=stop, batch_size=2):
        out.append(s)
        if len(out) == 3:
            stop.set()
    assert 3 <= len(out) < 50


def test_csv_cells_round_trip(tmp_path, engine):
    p = tmp_path / "x.jpg"
    p.write_bytes(jpeg_bytes(photo(64, 64)))
    (row,) = score_paths([p], engine)
    out = tmp_path / "o.csv"
    with RowWriter(out, COLUMNS, "csv") as w:
        w.write(row)
    (back,) = csv.DictReader(io.StringIO(out.read_text(encoding="utf-8")))
    assert float(back["MEL"]) == row["MEL"] and back["ita"] == ("" if row["ita"] is None else repr(row["ita"]))
    assert np.isclose(sum(float(back[c]) for c in PROBS), 1.0, atol=1e-6)
