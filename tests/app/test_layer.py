"""The application layer's own API: assess(), the row formatter, tables, model resolution, errors, audit run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mendicant_desktop.app import assessment as assess_mod
from mendicant_desktop.app.assessment import Assessment, assess, read_source, rescore, with_threshold
from mendicant_desktop.app.audit_run import load_audit_inputs, run_audit, to_report
from mendicant_desktop.app.errors import (
    MEMORY_REASON,
    ExitCode,
    LabelsError,
    ModelLoadError,
    OutputFileError,
    UsageError,
    failure_reason,
)
from mendicant_desktop.app.inputs import IMAGE_EXTENSIONS, dialog_filter, iter_inputs, resolve_image
from mendicant_desktop.app.model import MODEL_ENV, load_engine, resolve_card
from mendicant_desktop.app.rows import COLUMNS, METADATA_COLUMNS, format_line
from mendicant_desktop.app.scoring import iter_scored
from mendicant_desktop.app.tables import IMAGE_COLUMNS, parse_labels_text, parse_metadata_text, read_labels
from mendicant_desktop.core.errors import ImageLoadError, MendicantError, MetadataError
from mendicant_desktop.core.metadata import Metadata
from tests.cli.test_batch_fixtures import jpeg_bytes, photo


@pytest.fixture(scope="module")
def engine(tiny_bundle):
    return load_engine(tiny_bundle, threads=1)


def _jpeg(path: Path, w: int = 300, h: int = 220, seed: int = 0) -> Path:
    path.write_bytes(jpeg_bytes(photo(w, h, seed)))
    return path


# ----------------------------------------------------------------------------- errors and model


def test_user_facing_errors_are_one_family():
    for cls in (UsageError, LabelsError, ModelLoadError, OutputFileError, MetadataError, ImageLoadError):
        assert issubclass(cls, MendicantError)
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 130]
    assert failure_reason(MemoryError()) == MEMORY_REASON
    assert failure_reason(ImageLoadError("empty file (0 bytes)", "x.jpg")) == "empty file (0 bytes)"
    assert failure_reason(KeyError("k"), "decoding") == "unexpected error while decoding: KeyError: 'k'"


def test_model_rule_is_flag_then_environment_then_bundled(tmp_path, monkeypatch, tiny_bundle):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    bundled = resolve_card()
    assert bundled.parent.name == "models" and bundled.suffix == ".json"
    monkeypatch.setenv(MODEL_ENV, str(tiny_bundle))
    assert resolve_card() == Path(tiny_bundle)
    assert resolve_card(tmp_path / "other.onnx") == tmp_path / "other.json"  # flag wins, .onnx means its card
    with pytest.raises(ModelLoadError, match="model verification failed"):
        load_engine(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- inputs and tables


def test_one_extension_list_for_walks_dialogs_and_labels(tmp_path):
    for ext in IMAGE_EXTENSIONS:
        assert f"*{ext}" in dialog_filter() and f"*{ext.upper()}" in dialog_filter()
    _jpeg(tmp_path / "a.JPG")
    (tmp_path / "noext").write_bytes(jpeg_bytes(photo(40, 30)))  # found by content
    (tmp_path / "notes.txt").write_text("not an image")
    names = [Path(i.path).name for i in iter_inputs([tmp_path])]
    assert names == ["a.JPG", "noext"]
    assert resolve_image(tmp_path, "a") == str(tmp_path / "a.JPG")
    assert resolve_image(tmp_path, "sub\\b.png") == str(tmp_path / "sub" / "b.png")


def test_labels_and_metadata_join_on_the_same_image_column(tmp_path):
    # Both img_id (PAD) and image_id (HAM) present: labels and metadata must both pick the same one.
    text = "img_id,image_id,malignant,age,fitspatrick\nP1.png,H1,1,40,3\n"
    labels = parse_labels_text(text, tmp_path, "l.csv")
    meta = parse_metadata_text(text, "l.csv")
    first = next(c for c in IMAGE_COLUMNS if c in ("img_id", "image_id"))
    key = "P1.png" if first == "img_id" else "H1"
    assert labels.rows[0].image == key
    assert meta.lookup(key).metadata == Metadata(age=40)
    assert labels.rows[0].fst == "III" and labels.has_meta_columns


def test_labels_reader_reasons(tmp_path):
    labels = parse_labels_text(
        "image;dx;fst\na.jpg;MEL;\nb.jpg;xyz;2\n;nv;\nc.jpg;nv;9\na.jpg;nv;\n", tmp_path, "l.csv")
    assert [(r.image, r.malignant, r.fst) for r in labels.rows] == [("a.jpg", 1, "unknown")]
    reasons = dict(labels.skipped)
    assert "unknown diagnosis code 'xyz'" in reasons["b.jpg"]
    assert reasons["(line 4)"] == "no image name"
    assert "duplicate of line 2" in [r for i, r in labels.skipped if i == "a.jpg"][0]
    with pytest.raises(LabelsError, match="no image column"):
        parse_labels_text("name,dx\na,nv\n", tmp_path)
    with pytest.raises(LabelsError, match="file not found"):
        read_labels(tmp_path / "missing.csv", tmp_path)
    (tmp_path / "cp.csv").write_bytes("image,malignant,site\nné.jpg,0,t\xeate\n".encode("cp1252"))
    assert read_labels(tmp_path / "cp.csv", tmp_path).rows[0].image == "né.jpg"


# ----------------------------------------------------------------------------- assess()


def test_assess_reads_once_and_returns_one_frozen_result(tmp_path, engine, monkeypatch):
    img = _jpeg(tmp_path / "lesion.jpg", 600, 400)
    reads: list[str] = []
    real = assess_mod.read_image_file
    monkeypatch.setattr(assess_mod, "read_image_file", lambda p, **kw: reads.append(str(p)) or real(p, **kw))
    a = assess(engine, img, Metadata(age=50, sex="male", site="trunk"), preview_side=256)
    assert reads == [str(img)]
    assert isinstance(a, Assessment) and (a.width, a.height) == (600, 400)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.width = 1  # type: ignore[misc]
    assert a.x.shape == (*engine.input_size, 3) and a.prediction.cam is not None
    assert max(a.preview.shape[:2]) <= 256
    ref = engine.predict_preprocessed(a.x[None], [a.metadata], cam=False)[0]
    assert np.allclose(a.prediction.probabilities, ref.probabilities, atol=1e-6)
    assert a.skin is not None and a.warnings == a.image_warnings + a.domain_warnings
    # in-memory sources: bytes and Pillow images
    b = assess(engine, img.read_bytes(), a.metadata, name="pasted")
    assert b.name == "pasted" and b.sha256 == a.sha256
    c = assess(engine, Image.open(img), a.metadata, cam_target=None)
    assert c.prediction.cam is None and len(c.sha256) == 64


def test_assess_raises_image_load_error_and_survives_a_skin_tone_failure(tmp_path, engine, monkeypatch):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"<html>not an image</html>")
    with pytest.raises(ImageLoadError, match="not a recognised image format"):
        assess(engine, bad)

    def boom(rgb):
        raise ValueError("cannot judge this image")

    monkeypatch.setattr(assess_mod, "estimate_skin_tone", boom)
    a = assess(engine, _jpeg(tmp_path / "ok.jpg"))
    assert a.skin.fst == "unknown" and a.skin.reason == "cannot judge this image"
    assert assess(engine, tmp_path / "ok.jpg", estimate_fst=False).skin is None


def test_rescore_and_threshold_give_new_frozen_results(tmp_path, engine):
    a = assess(engine, _jpeg(tmp_path / "x.jpg"))
    b = rescore(engine, a, Metadata(age=80, sex="female", site="head-or-neck"))
    assert b is not a and b.metadata.age == 80 and b.sha256 == a.sha256
    ref = engine.predict_preprocessed(a.x[None], [b.metadata], cam=False)[0]
    assert np.allclose(b.prediction.probabilities, ref.probabilities, atol=1e-6)
    p = with_threshold(a.prediction, 0.0001)
    assert p.risk == "high" and p.malignancy == a.prediction.malignancy


# ----------------------------------------------------------------------------- rows and the stream


def test_stream_rows_equal_assess_rows_and_carry_warnings(tmp_path, engine):
    small = tmp_path / "tiny.png"
    Image.fromarray(photo(90, 70)).save(small)  # under 128 px: a quality warning
    big = _jpeg(tmp_path / "big.jpg", 700, 500, seed=3)
    meta = parse_metadata_text("image,age,sex,site\ntiny.png,33,f,arm\nbig.jpg,,m,back\n", "m.csv")
    cols = COLUMNS + METADATA_COLUMNS
    streamed = {s.path: s for s in iter_scored([small, big], engine, metadata=meta, workers=2)}
    for path in (small, big):
        s = streamed[str(path)]
        direct = assess(engine, path, meta.lookup(str(path)).metadata, cam_target=None)
        assert s.assessment is not None and s.row == direct.row(cols)
        assert format_line(s.row, cols, "csv") == format_line(direct.row(cols), cols, "csv")
    assert "Image too small" in streamed[str(small)].row["warnings"]
    assert streamed[str(small)].row["top_class"].isupper() and streamed[str(small)].row["status"] == "ok"


def test_failures_are_rows_with_the_reason(tmp_path, engine):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    (s,) = list(iter_scored([empty], engine))
    assert s.assessment is None and s.failure.reason == "empty file (0 bytes)"
    assert s.row["status"] == "error" and s.row["error"] == "empty file (0 bytes)"
    assert s.row["model_sha256"] == engine.card.sha256


# ----------------------------------------------------------------------------- audit run


def test_audit_run_scores_through_the_stream_and_reports(tmp_path, engine):
    lines = ["image,malignant,fst"]
    for i in range(6):
        _jpeg(tmp_path / f"i{i}.jpg", 200, 160, seed=i)
        lines.append(f"i{i},{i % 2},{'I' if i < 3 else ''}")
    lines.append("gone.jpg,1,II")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    labels, meta = load_audit_inputs(tmp_path / "labels.csv", tmp_path)
    assert meta is None and len(labels.rows) == 7
    seen: list[tuple[int, int]] = []
    run = run_audit(engine, labels, meta, n_boot=20, explain=True, examples=1,
                    progress=lambda d, t: seen.append((d, t)), images_dir=tmp_path)
    assert seen[-1] == (7, 7) and not run.interrupted
    assert len(run.scores) == 6 and run.failed[0][0] == "gone.jpg"
    assert run.fst_source[:3] == ["label"] * 3 and run.fst_source[3:] == ["estimated"] * 3
    direct = assess(engine, tmp_path / "i0.jpg", cam_target=None)
    assert run.scores[0] == pytest.approx(direct.prediction.malignancy, abs=1e-7)
    assert len(run.saliency) == 6 and run.result is not None
    report = to_report(run, {"name": "tiny"})
    assert report.per_image[0]["image"] == "i0" and report.failed == run.failed


def test_audit_run_stops_early(tmp_path, engine):
    for i in range(4):
        _jpeg(tmp_path / f"s{i}.jpg", seed=i)
    (tmp_path / "l.csv").write_text("image,malignant\n" + "".join(f"s{i}.jpg,{i % 2}\n" for i in range(4)))
    labels = read_labels(tmp_path / "l.csv", tmp_path)
    run = run_audit(engine, labels, stop=lambda: True)
    assert run.interrupted and run.result is None
    assert read_source(tmp_path / "s0.jpg").sha256 is not None


def test_version_names_the_model_the_batch_would_load(tiny_bundle, monkeypatch, capsys):
    """One MENDICANT_MODEL rule: --version follows it like --batch does (it used to name the bundled model)."""
    from mendicant_desktop.cli.main import run_headless
    from mendicant_desktop.core.bundle import ModelCard

    monkeypatch.setenv(MODEL_ENV, str(tiny_bundle))
    assert run_headless(["--version"]) == ExitCode.OK
    out = capsys.readouterr().out
    assert ModelCard.load(tiny_bundle).name in out
