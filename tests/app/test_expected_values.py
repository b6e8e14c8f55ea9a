"""Correctness against values fixed in advance: the bundled model's rows for real images and awkward inputs.

The expected rows live in ``tests/fixtures/bundled_expected.json``, written once by
``python -m tests.support.expected_values`` (see its docstring). A replaced bundled model fails here on purpose,
naming the script that regenerates the fixture: a new model's predictions must be looked at, not absorbed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mendicant_desktop.app.model import load_engine
from mendicant_desktop.core.cpu import int8_cpu_flags as cpu_features
from tests.support import expected_values as ev

#: Probability tolerance on a CPU with the fixture's features (ONNX Runtime is deterministic there) ...
SAME_CPU_TOL = 1e-6
#: ... and on a CPU with other features (VNNI or not): the INT8 kernels round differently. The tolerance is what the
#: app itself accepts there: the tolerance of the card's load-time kernel check against the build machine's INT8
#: outputs (`self_check.int8_tolerance`; 0.05 for a card without one).
OTHER_CPU_TOL = 0.05


@pytest.fixture(scope="module")
def fixture() -> dict:
    return json.loads(ev.FIXTURE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def engine(bundled_card, fixture):
    eng = load_engine(bundled_card, threads=1)
    want = fixture["model"]
    if eng.card.sha256 != want["sha256"]:
        pytest.fail(f"the bundled model is {eng.card.name} {eng.card.version} (sha256 {eng.card.sha256[:12]}), "
                    f"the fixture's is {want['name']} {want['version']} (sha256 {want['sha256'][:12]}): regenerate "
                    "tests/fixtures/bundled_expected.json with `python -m tests.support.expected_values`, review "
                    "the diff and commit it with the model")
    return eng


def _other_cpu_tol(engine) -> float:
    check = engine.card.raw.get("self_check") or {}
    return float(check.get("int8_tolerance", OTHER_CPU_TOL))


def _compare(got: dict, want: dict, same_cpu: bool, *, exact_sha: bool, other_tol: float = OTHER_CPU_TOL) -> None:
    tol = SAME_CPU_TOL if same_cpu else other_tol
    for col, w in want.items():
        g = got[col]
        if col in ev.MODEL_FLOAT_CELLS and w is not None:
            assert g == pytest.approx(w, abs=tol), (want["image"], col)
        elif col == "sha256" and not exact_sha:
            continue  # an encoder-dependent file: checked against its own bytes by the caller
        elif col in ("top_class", "risk") and not same_cpu:
            continue
        else:
            assert g == w, (want["image"], col)


def test_awkward_inputs_give_the_fixed_rows(tmp_path, engine, fixture):
    same_cpu = cpu_features() == fixture["made_on"]["cpu_features"]
    files = ev.awkward_inputs(tmp_path)
    rows = [ev.portable(r, tmp_path) for r in ev.score(engine, list(files.values()), None)]
    assert [r["image"] for r in rows] == [r["image"] for r in fixture["awkward_inputs"]]
    other_tol = _other_cpu_tol(engine)
    for got, want in zip(rows, fixture["awkward_inputs"], strict=True):
        _compare(got, want, same_cpu, exact_sha=False, other_tol=other_tol)
        data = files[got["image"]].read_bytes()
        assert got["sha256"] == (hashlib.sha256(data).hexdigest() if data else None)
    by = {r["image"]: r for r in rows}
    # what the fixture pins, said in words
    assert by["rotated.tif"]["width"] == 240 and by["rotated.tif"]["height"] == 320  # EXIF orientation applied
    assert "Image too small (96×72 px)" in by["tiny.bmp"]["warnings"]
    assert by["empty.jpg"]["error"] == "empty file (0 bytes)" and by["html.jpg"]["error"] == "not a recognised image format"
    assert by["truncated.png"]["status"] == by["bomb.png"]["status"] == "error"


def test_real_images_give_the_fixed_rows(shared_data, engine, fixture):
    same_cpu = cpu_features() == fixture["made_on"]["cpu_features"]
    paths = [shared_data / ds / "images" / name for ds, name in ev.REAL_IMAGES]
    rows = [ev.portable(r, shared_data) for r in ev.score(engine, paths, ev.pad_metadata_csv())]
    assert [r["image"] for r in rows] == [r["image"] for r in fixture["real_images"]]
    other_tol = _other_cpu_tol(engine)
    for got, want in zip(rows, fixture["real_images"], strict=True):
        _compare(got, want, same_cpu, exact_sha=True, other_tol=other_tol)
    mel = next(r for r in rows if r["image"].endswith("PAT_109_868_113.jpg"))  # a biopsied melanoma
    assert mel["risk"] == "high" and mel["meta_site"] == "head-or-neck" and mel["meta_age"] == 82.0


def test_the_fixture_names_no_local_folder(fixture):
    for r in fixture["real_images"] + fixture["awkward_inputs"]:
        assert not Path(r["image"]).is_absolute()
