"""``mendicant-desktop --audit``: a real subprocess run on a labelled PAD-UFES-20 subset with the tiny model,
plus in-process checks of the labels parser, usage errors and the batch-pipeline equivalence."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from mendicant_desktop.app.tables import read_labels
from mendicant_desktop.cli import ExitCode
from mendicant_desktop.cli import audit as audit_cli
from tests.conftest import REPO, SHARED_DATA

PAD = SHARED_DATA / "pad_ufes20_clinical"
GROUP_KEYS = {"n", "n_pos", "auroc", "auroc_ci95", "sensitivity", "specificity", "ppv", "npv", "ece", "brier",
              "sufficient", "fst_source"}
N_II = 34  # FST II rows: enough for one sufficient group


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MENDICANT_MODEL", None)
    return env


def _pad_rows() -> list[dict[str, str]]:
    if not (PAD / "labels.csv").is_file():
        pytest.skip(f"PAD-UFES-20 data not found at {PAD} (../shared/data beside the repo)")
    with open(PAD / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def audit_set(tmp_path_factory) -> dict[str, Path]:
    """A labels file in PAD's own spelling (img_id, fitspatrick, dx only) over symlinks to real images, plus a
    corrupt image and a missing one; every FST V and VI row is included."""
    rows = _pad_rows()
    root = tmp_path_factory.mktemp("audit_set")
    images = root / "images"
    images.mkdir()
    pick: list[dict[str, str]] = [r for r in rows if r["fst"] in ("5", "6")]
    two = [r for r in rows if r["fst"] == "2"]
    pos = [r for r in two if r["malignant"] == "1"][: N_II // 2]
    neg = [r for r in two if r["malignant"] == "0"][: N_II - len(pos)]
    pick += pos + neg
    pick += [r for r in rows if r["fst"] == "1"][:6]
    pick += [r for r in rows if r["fst"] == ""][:5]
    for r in pick:
        os.symlink(PAD / "images" / r["image"], images / r["image"])
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    labels = root / "labels.csv"
    with open(labels, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["img_id", "dx", "fitspatrick", "age", "gender", "region"])
        for r in pick:
            w.writerow([r["image"], r["dx"], r["fst"], r["age"], r["gender"], r["region"]])
        w.writerow(["broken.jpg", "NEV", "2", "40", "FEMALE", "ARM"])
        w.writerow(["missing.jpg", "MEL", "3", "", "", ""])
        w.writerow(["nolabel.jpg", "XYZ", "2", "", "", ""])
    return {"root": root, "images": images, "labels": labels, "n_rows": len(pick) + 3}


@pytest.fixture(scope="module")
def audit_run(audit_set, tiny_bundle) -> dict:
    out = audit_set["root"] / "report.html"
    js = audit_set["root"] / "metrics.json"
    cmd = [sys.executable, "-m", "mendicant_desktop", "--audit", str(audit_set["labels"]), "--images",
           str(audit_set["images"]), "--out", str(out), "--json", str(js), "--model", str(tiny_bundle),
           "--n-boot", "200", "--threads", "2", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=180)
    return {"proc": proc, "html": out, "json": js}


def test_audit_subprocess_exit_code_and_json(audit_run, audit_set):
    proc = audit_run["proc"]
    assert proc.returncode == ExitCode.PARTIAL, proc.stderr  # two images failed, one label unusable
    assert "audited" in proc.stderr and "Traceback" not in proc.stderr
    d = json.loads(audit_run["json"].read_text(encoding="utf-8"))
    for key in ("model", "threshold", "overall", "groups", "auroc_gap", "auroc_gap_ci95"):
        assert key in d
    assert d["model"] == "tiny-test-model"
    assert set(d["groups"]) <= {"I", "II", "III", "IV", "V", "VI", "unknown"}
    for name, g in d["groups"].items():
        assert GROUP_KEYS <= set(g), name
        assert len(g["auroc_ci95"]) == 2
        assert g["fst_source"] in ("label", "estimated", "mixed")
    assert d["groups"]["V"]["sufficient"] is False and d["groups"]["V"]["n"] == 3
    assert d["groups"]["VI"]["sufficient"] is False and d["groups"]["VI"]["n"] == 1
    assert d["groups"]["I"]["sufficient"] is False
    ii = d["groups"]["II"]
    assert ii["sufficient"] is True and ii["n"] == N_II and ii["fst_source"] == "label"
    assert ii["auroc"] is not None and ii["auroc_ci95"][0] <= ii["auroc"] <= ii["auroc_ci95"][1]
    # Only one sufficient skin type: no gap can be computed, and it says so with nulls, not a number.
    assert d["auroc_gap"] is None and d["auroc_gap_ci95"] == [None, None]
    # Empty fst -> the engine's estimate (masked PAD crops: mostly 'unknown').
    est = [r for r in d["images"] if r["fst_source"] == "estimated"]
    assert len(est) == 5
    assert d["fst_source_counts"] == {"estimated": 5, "label": d["n_audited"] - 5}
    failed = {f["image"]: f["reason"] for f in d["failed"]}
    assert set(failed) == {"broken.jpg", "missing.jpg"}
    assert "not found" in failed["missing.jpg"]
    assert [s["image"] for s in d["skipped"]] == ["nolabel.jpg"]
    assert d["n_audited"] == audit_set["n_rows"] - 3
    assert d["overall"]["n"] == d["n_audited"]
    expl = d["explanation"]["groups"]
    assert expl["overall"]["n_images"] == d["n_audited"]
    assert expl["II"]["mask_kinds"].get("masked-crop", 0) >= N_II - 2  # PAD crops: non-black region
    assert 0.0 <= expl["II"]["mean"] <= 1.0


def test_audit_html_self_contained(audit_run):
    html = audit_run["html"].read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs, "expected inline images and in-page links"
    for ref in refs:
        assert ref.startswith(("data:", "#")), ref
    assert not re.search(r"<script|<link|@import|url\(", html, flags=re.I)
    assert "insufficient (n=3)" in html and "insufficient (n=1)" in html
    assert html.count("<svg") >= 3  # ROC, calibration, saliency distribution
    for needle in ("broken.jpg", "missing.jpg", "nolabel.jpg", "How to read this report", "Model card summary",
                   "tiny-test-model", "AUROC gap", "saliency-in-lesion", "image estimate"):
        assert needle in html, needle


def test_audit_scores_equal_the_batch_pipeline(audit_run, audit_set, tiny_bundle):
    """Same code path, same metadata join: the audit's scores are --batch's scores, bit for bit."""
    from mendicant_desktop.app.model import load_engine as build_engine
    from mendicant_desktop.app.scoring import score_paths
    from mendicant_desktop.app.tables import load_metadata_csv

    d = json.loads(audit_run["json"].read_text(encoding="utf-8"))
    some = [r for r in d["images"]][:6]
    engine = build_engine(str(tiny_bundle), threads=1)
    rows = list(score_paths([audit_set["images"] / r["image"] for r in some], engine,
                            metadata=load_metadata_csv(audit_set["labels"]), workers=1))
    assert [r["malignancy"] for r in rows] == [r["score"] for r in some]
    assert rows[0]["meta_sex"] in ("female", "male")  # the labels file's gender column reached the model


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_labels_variants(tmp_path):
    f = _write(tmp_path / "l.csv", "Image;Malignant;FST;dx\n"
                                   "a.jpg;1;II;\nb;0;;NV\nc.jpg;;vi;BCC\nd.jpg;;;AK\ne.jpg;;;akiec\n"
                                   "f.jpg;2;;\ng.jpg;0;7;\na.jpg;0;I;\n;1;1;\n")
    (tmp_path / "b.png").write_bytes(b"x")
    lab = read_labels(str(f), str(tmp_path))
    got = {r.image: (r.malignant, r.fst) for r in lab.rows}
    assert got == {"a.jpg": (1, "II"), "b": (0, "unknown"), "c.jpg": (1, "VI"), "d.jpg": (0, "unknown"),
                   "e.jpg": (1, "unknown")}
    assert [r.path for r in lab.rows if r.image == "b"] == [str(tmp_path / "b.png")]  # extension found
    why = dict(lab.skipped)
    assert "malignant must be 0 or 1" in why["f.jpg"]
    assert "Fitzpatrick" in why["g.jpg"]
    assert "duplicate" in why["a.jpg"]
    assert any("no image name" in r for _, r in lab.skipped)
    assert lab.has_meta_columns is False


@pytest.mark.parametrize(("text", "message"), [
    ("file,fst\na.jpg,1\n", "malignant"),
    ("name,malignant\na.jpg,1\n", "no image column"),
    ("", "empty"),
    ("image,malignant\na.jpg,5\n", "no usable rows"),
])
def test_usage_errors(tmp_path, capsys, text, message, tiny_bundle):
    labels = _write(tmp_path / "labels.csv", text)
    rc = audit_cli.main(["--audit", str(labels), "--images", str(tmp_path), "--out", str(tmp_path / "r.html"),
                         "--model", str(tiny_bundle)])
    assert rc == ExitCode.USAGE
    assert message in capsys.readouterr().err


def test_usage_errors_options(tmp_path, capsys, tiny_bundle):
    labels = _write(tmp_path / "labels.csv", "image,malignant\na.jpg,1\n")
    base = ["--audit", str(labels), "--images", str(tmp_path), "--model", str(tiny_bundle)]
    assert audit_cli.main([*base, "--out", str(tmp_path / "r.pdf")]) == ExitCode.USAGE
    assert audit_cli.main([*base, "--out", str(tmp_path / "nope" / "r.html")]) == ExitCode.USAGE
    assert audit_cli.main([*base, "--out", str(tmp_path / "r.html"), "--threshold", "1.5"]) == ExitCode.USAGE
    assert audit_cli.main(["--audit", str(labels), "--images", str(tmp_path / "none"), "--out",
                           str(tmp_path / "r.html")]) == ExitCode.USAGE
    assert audit_cli.main([*base, "--out", str(tmp_path / "r.html"), "--model", str(tmp_path / "x.json")]) \
        == ExitCode.USAGE
    assert "model verification failed" in capsys.readouterr().err


def test_nothing_scorable_still_reports(tmp_path, tiny_bundle):
    labels = _write(tmp_path / "labels.csv", "image,malignant,fst\ngone.jpg,1,2\n")
    out, js = tmp_path / "r.html", tmp_path / "m.json"
    rc = audit_cli.main(["--audit", str(labels), "--images", str(tmp_path), "--out", str(out), "--json", str(js),
                         "--model", str(tiny_bundle), "--quiet"])
    assert rc == ExitCode.PARTIAL
    d = json.loads(js.read_text(encoding="utf-8"))
    assert d["groups"] == {} and d["overall"] is None and d["failed"][0]["image"] == "gone.jpg"
    assert "gone.jpg" in out.read_text(encoding="utf-8")
