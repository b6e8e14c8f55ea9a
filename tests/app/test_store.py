"""The case store: round trip of a real assessment, migration from schema 1, kill -9 during writes, undo, erase."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mendicant_desktop.app import store as store_mod
from mendicant_desktop.app.assessment import assess
from mendicant_desktop.app.model import load_engine
from mendicant_desktop.app.store import (
    SCHEMA_VERSION,
    CaseStore,
    StoreError,
    new_patient_code,
    thumbnail_png,
)
from mendicant_desktop.core.metadata import Metadata
from tests.gui.conftest import lesion_image
from tests.support.synthetic import write_schema1_store

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return load_engine(tiny_bundle, threads=1)


@pytest.fixture
def store(tmp_path) -> CaseStore:
    s = CaseStore(tmp_path / "data" / "cases.sqlite3")
    yield s
    s.close()


def test_round_trip_of_an_assessment(store, engine, tmp_path):
    img = lesion_image(tmp_path / "lesion.jpg")
    meta = Metadata(age=63, sex="female", site="trunk")
    a = assess(engine, img, meta)
    pat = store.add_patient()
    assert pat.code.startswith("P-") and len(pat.code) == 8 and pat.name is None and pat.birth_date is None
    les = store.add_lesion(pat.id, label="left shoulder", site="trunk")
    vid = store.save_assessment(a, model_version=engine.card.version, path=str(img), lesion_id=les.id,
                                thumbnail=thumbnail_png(np.zeros((8, 8, 3), np.uint8)), fst_override="V",
                                notes="itches")
    v = store.visit(vid)
    assert v.patient_code == pat.code and v.lesion_label == "left shoulder" and v.lesion_site == "trunk"
    assert v.sha256 == a.sha256 and v.width == a.width and v.height == a.height
    assert v.model_name == engine.card.name and v.model_version == engine.card.version
    assert v.model_sha256 == engine.card.sha256
    assert v.fst_override == "V" and v.notes == "itches" and v.status == "done"
    assert v.meta() == meta
    # the stored result gives back the same prediction, the same batch row and the same skin estimate
    p = v.prediction()
    assert p.probabilities == pytest.approx(a.prediction.probabilities, abs=0)
    assert p.malignancy == a.prediction.malignancy and p.risk == a.prediction.risk
    assert p.threshold == a.prediction.threshold and p.top_class == a.prediction.top_class
    assert v.result["row"] == a.row()
    assert v.skin() == a.skin
    assert v.malignancy == a.prediction.malignancy and v.risk == a.prediction.risk
    # the image copy is byte-identical, private, and named by its hash
    assert v.image_copy and Path(v.image_copy).read_bytes() == img.read_bytes()
    assert Path(v.image_copy).name.startswith(a.sha256)
    assert stat.S_IMODE(os.stat(v.image_copy).st_mode) == 0o600
    img.unlink()  # the original is gone: follow-up still has the copy
    assert v.image_file == v.image_copy
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(store.path.parent).st_mode) == 0o700
    # a second process (or a restart) sees the same
    with CaseStore(store.path) as again:
        assert [x.id for x in again.visits()] == [vid]
        assert again.visits()[0].result == v.result


def test_no_image_copy_when_switched_off(tmp_path, engine):
    img = lesion_image(tmp_path / "x.jpg")
    with CaseStore(tmp_path / "s.sqlite3", copy_images=False) as s:
        v = s.visit(s.save_assessment(assess(engine, img), path=str(img)))
        assert v.image_copy is None and v.path == str(img)
        assert not (tmp_path / "images").exists()


def test_search_and_filters(store):
    a, b = store.add_patient("P-AAAAAA"), store.add_patient("P-BBBBBB")
    la, lb = store.add_lesion(a.id, label="back mole"), store.add_lesion(b.id, label="nose")

    def rec(m, risk):
        return {"prediction": {"malignancy": m, "risk": risk, "threshold": 0.13}, "model": {}}

    v1 = store.save_visit(name="one.jpg", status="done", lesion_id=la.id, result=rec(0.05, "low"),
                          visit_date="2026-01-10")
    v2 = store.save_visit(name="two.jpg", status="done", lesion_id=la.id, result=rec(0.40, "high"),
                          visit_date="2026-06-10", notes="Grew since January")
    v3 = store.save_visit(name="three.jpg", status="done", lesion_id=lb.id, result=rec(0.02, "low"),
                          visit_date="2026-03-01")
    ids = lambda vs: [v.id for v in vs]  # noqa: E731
    assert ids(store.visits()) == [v1, v3, v2]  # by visit date
    assert ids(store.visits(patient="P-AAAAAA")) == [v1, v2]
    assert ids(store.lesion_history(lb.id)) == [v3]
    assert ids(store.visits(risk="high")) == [v2]
    assert ids(store.visits(since="2026-02-01", until="2026-05-31")) == [v3]
    assert ids(store.visits(text="grew")) == [v2]
    assert ids(store.visits(text="nose")) == [v3]
    assert ids(store.visits(text="P-BBB")) == [v3]
    assert store.add_patient("P-AAAAAA").id == a.id  # an existing code is reused, never duplicated
    assert len({new_patient_code() for _ in range(200)}) == 200


def test_delete_and_undo_the_last_delete(store, tmp_path):
    store.copy_images = True
    vid1 = store.save_visit(name="a", status="done", sha256="a" * 64,
                            image_copy=store.copy_image("a" * 64, data=b"AAA", suffix=".png"))
    vid2 = store.save_visit(name="b", status="done")
    copy1 = store.visit(vid1).image_copy
    store.delete_visit(vid1)
    assert [v.id for v in store.visits()] == [vid2] and store.visit(vid1) is None
    assert [v.id for v in store.undo_delete()] == [vid1]
    assert {v.id for v in store.visits()} == {vid1, vid2}
    assert store.undo_delete() == []
    store.delete_visit(vid1)
    store.delete_visit(vid2)  # only the last delete can be undone: the first is gone for good, copy included
    assert not Path(copy1).exists()
    assert [v.id for v in store.undo_delete()] == [vid2]
    assert [v.id for v in store.visits()] == [vid2]
    store.delete_visits([vid2])
    assert store.visits() == []
    assert [v.id for v in store.undo_delete()] == [vid2]


def test_migration_from_schema_1_keeps_the_data(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = write_schema1_store(path, "arm")
    cols1 = {r[1] for r in conn.execute("PRAGMA table_info(visits)")}
    conn.close()
    assert "visit_date" not in cols1 and "deleted" not in cols1
    with CaseStore(path) as s:
        assert s.schema_version == SCHEMA_VERSION == 2
        (v,) = s.visits()
        assert v.name == "old.jpg" and v.patient_code == "P-OLD001" and v.lesion_label == "arm"
        assert v.visit_date == "2025-05-01" and v.meta() == Metadata(age=40) and v.clinician == ""
        assert s.visits(risk="high")[0].id == v.id
        assert s.integrity_ok()
    # opening again is a no-op
    with CaseStore(path) as s:
        assert len(s.visits()) == 1


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "new.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(StoreError, match="newer MENDICANT"):
        CaseStore(path)
    assert path.read_bytes() == before


def test_an_unwritable_place_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError, match="cannot open the case store"):
        CaseStore(blocker / "cases.sqlite3")


def test_audit_runs_are_stored(store):
    rid = store.save_audit_run({"labels": "labels.csv", "images_dir": "imgs", "n_boot": 200, "threshold": 0.13},
                               {"overall": {"auroc": 0.81}}, model_name="m", model_sha256="s")
    (r,) = store.audit_runs()
    assert r.id == rid and r.inputs["n_boot"] == 200 and r.results["overall"]["auroc"] == 0.81


def test_erase_all(store):
    p = store.add_patient(name="Ann Example", birth_date="1950-02-03")
    store.save_visit(name="a", status="done", lesion_id=store.add_lesion(p.id).id,
                     image_copy=store.copy_image("b" * 64, data=b"x", suffix=".png"))
    store.save_audit_run({}, {})
    store.delete_visit(store.save_visit(name="gone", status="done"))
    assert store.images_dir.exists()
    raw = store.path.read_bytes() + (Path(str(store.path) + "-wal").read_bytes()
                                     if Path(str(store.path) + "-wal").exists() else b"")
    assert b"Ann Example" in raw
    store.erase_all()
    assert store.visits() == [] and store.patients() == [] and store.audit_runs() == []
    assert store.undo_delete() == []
    assert not store.images_dir.exists()
    leftovers = b"".join(p.read_bytes() for p in store.path.parent.iterdir() if p.is_file())
    assert b"Ann Example" not in leftovers
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600


WRITER = textwrap.dedent("""
    import sys
    from mendicant_desktop.app.store import CaseStore
    s = CaseStore(sys.argv[1])
    les = s.add_lesion(s.add_patient("P-KILLME").id, label="l")
    i = 0
    while True:
        s.save_visit(name=f"case {i}", status="done", lesion_id=les.id, notes="x" * 2000,
                     result={"prediction": {"malignancy": i / 1e6, "risk": "low", "threshold": 0.13}, "model": {}})
        print(i, flush=True)
        i += 1
""")


def test_kill_9_during_writes_loses_no_saved_case(tmp_path):
    path = tmp_path / "killed.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=str(REPO))
    saved = []
    deadline = time.monotonic() + 60
    try:
        while len(saved) < 40 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            saved.append(int(line))
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # while it is in the middle of the next write
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(saved) >= 40, "the writer did not save 40 cases in time"
    with CaseStore(path) as s:
        assert s.integrity_ok()
        names = [v.name for v in s.visits()]
    # every case reported as saved is there, in order; at most the one being written when killed is extra
    assert names[: len(saved)] == [f"case {i}" for i in saved]
    assert len(names) - len(saved) in (0, 1)


def test_default_location_follows_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MENDICANT_DATA_DIR", str(tmp_path / "dd"))
    with CaseStore.open_default() as s:
        assert s.path == tmp_path / "dd" / store_mod.STORE_FILE
    monkeypatch.delenv("MENDICANT_DATA_DIR")
    monkeypatch.setenv("MENDICANT_PORTABLE", "1")
    from mendicant_desktop.app.paths import data_dir, executable_dir

    assert data_dir() == executable_dir() / "MENDICANT-data"


def test_erase_all_never_lets_another_thread_read_a_half_made_store(tmp_path):
    """Readers on other threads during erase_all wait for the new, fully migrated store (they used to get a new
    lock and could query before the migrations had run: "no such column: v.deleted")."""
    import threading

    s = CaseStore(tmp_path / "e.sqlite3")
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            try:
                s.visits()
                s.audit_runs()
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            s.erase_all()
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []
    assert s.schema_version == SCHEMA_VERSION and s.visits() == []
    s.close()
