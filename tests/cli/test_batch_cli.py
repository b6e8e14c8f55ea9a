"""End-to-end tests of ``mendicant-desktop --batch``: the real CLI in a subprocess (no Qt, no display),
exit codes, bad inputs, the metadata join, and resume after a real kill."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mendicant_desktop.app.output import path_key, read_rows
from mendicant_desktop.app.rows import COLUMNS, METADATA_COLUMNS
from mendicant_desktop.cli import ExitCode
from mendicant_desktop.cli import batch as batch_mod
from tests.cli.test_batch_fixtures import cleanup, jpeg_bytes, make_input_folder, photo, real_image_sample
from tests.conftest import REPO, SHARED_DATA

PROBS = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("MENDICANT_MODEL", None)
    return env


def cli(*args: str | os.PathLike, importtime: bool = False) -> list[str]:
    pre = ["-X", "importtime"] if importtime else []
    return [sys.executable, *pre, "-m", "mendicant_desktop", "--batch", *map(str, args)]


def run(*args, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cli(*args, **kw), cwd=REPO, env=cli_env(), capture_output=True, text=True,
                          timeout=timeout)


def imported_modules(stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output."""
    mods = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return mods


def by_name(rows: list[dict], root: Path) -> dict[str, dict]:
    return {os.path.relpath(r["image"], root): r for r in rows}


@pytest.fixture()
def mixed_folder(tmp_path):
    real = real_image_sample(SHARED_DATA) if (SHARED_DATA / "isic_dermoscopy" / "images").is_dir() else None
    root = tmp_path / "inputs"
    exp = make_input_folder(root, real)
    yield root, exp
    cleanup(root)


def test_end_to_end_mixed_folder_metadata_and_resume(mixed_folder, tiny_bundle, tmp_path):
    root, exp = mixed_folder
    meta = tmp_path / "meta.csv"
    meta.write_text("patient_id;img_id;age;gender;region\n"
                    "P1;cmyk.jpg;62;MALE;FOREARM\n"
                    "P2;name with spaces;35;FEMALE;Posterior Torso\n"
                    "P3;grey.jpg;old;F;ARM\n"
                    "P4;unused.jpg;1;F;ARM\n", encoding="utf-8")
    out = tmp_path / "scores.csv"
    res = run(root, "--out", out, "--model", tiny_bundle, "--metadata", meta, importtime=True)
    assert res.returncode == ExitCode.PARTIAL, res.stderr[-3000:]
    mods = imported_modules(res.stderr)
    assert {"numpy", "PIL", "onnxruntime", "tqdm"} <= mods  # the import log is real...
    assert not {"PySide6", "shiboken6", "torch", "compression"} & mods  # ...and has no Qt, torch, compression
    assert "img/s" in res.stderr or "s/img" in res.stderr  # tqdm progress on stderr
    summary = [ln for ln in res.stderr.splitlines() if ln.startswith("mendicant-desktop --batch:")][-1]
    exp["grey.jpg"] = "error"  # its metadata row has an invalid age
    n_ok = sum(v == "ok" for v in exp.values())
    assert f"{n_ok} ok, {len(exp) - n_ok} failed" in summary and str(out) in summary

    with open(out, encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh))
    assert tuple(header) == COLUMNS + METADATA_COLUMNS
    rows = read_rows(out)
    assert len(rows) == len(exp)
    got = by_name(rows, root)
    assert {k: r["status"] for k, r in got.items()} == exp
    for r in rows:
        if r["status"] == "ok":
            assert abs(sum(float(r[c]) for c in PROBS) - 1.0) < 1e-5
            assert r["error"] == "" and r["top_class"] in PROBS and r["fst_estimate"]
        else:
            assert r["error"] and r["MEL"] == ""
    assert (got["cmyk.jpg"]["meta_age"], got["cmyk.jpg"]["meta_sex"], got["cmyk.jpg"]["meta_site"]) == (
        "62.0", "male", "arm")
    assert got["name with spaces.jpg"]["meta_site"] == "trunk"
    assert got["UPPER.JPEG"]["meta_sex"] == ""  # no metadata row: scored without metadata
    assert "age" in got["grey.jpg"]["error"]
    assert (got["rotated_exif.jpg"]["width"], got["rotated_exif.jpg"]["height"]) == ("80", "120")
    if "huge 4000x3000.jpg" in got:
        assert (got["huge 4000x3000.jpg"]["width"], got["huge 4000x3000.jpg"]["height"]) == ("4000", "3000")

    # without --resume an existing output is refused and left alone
    before = out.read_bytes()
    res = run(root, "--out", out, "--model", tiny_bundle, "--quiet")
    assert res.returncode == ExitCode.USAGE and "--resume" in res.stderr and out.read_bytes() == before

    # --resume: ok rows are skipped, error rows retried and replaced -> still one row per input
    res = run(root, "--out", out, "--model", tiny_bundle, "--metadata", meta, "--resume", "--quiet")
    assert res.returncode == ExitCode.PARTIAL, res.stderr[-2000:]
    assert f"{n_ok} already done" in res.stderr
    again = read_rows(out)
    assert len(again) == len(exp) and len({r["image"] for r in again}) == len(exp)
    assert {r["image"]: r["MEL"] for r in again} == {r["image"]: r["MEL"] for r in rows}


def _wait_rows(path: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists():
            with open(path, "rb") as fh:
                k = fh.read().count(b"\n") - 1
            if k >= n:
                return k
        if proc.poll() is not None:
            pytest.fail(f"the run ended before it could be interrupted: {proc.communicate()[1][-2000:]}")
        time.sleep(0.01)
    pytest.fail("no progress")


def test_kill_sigterm_and_resume_lose_nothing_and_duplicate_nothing(tiny_bundle, tmp_path):
    src = tmp_path / "one.jpg"
    src.write_bytes(jpeg_bytes(photo(400, 300)))
    folder = tmp_path / "many"
    folder.mkdir()
    n = 300
    for i in range(n):
        os.symlink(src, folder / f"img_{i:04d}.jpg")
    out = tmp_path / "out.csv"
    args = cli(folder, "--out", out, "--model", tiny_bundle, "--quiet", "--batch-size", "1", "--threads", "1")

    # 1. SIGKILL mid-run: only the images in flight are lost, every written row is complete
    proc = subprocess.Popen(args, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_rows(out, 10, proc)
    proc.kill()
    proc.communicate(timeout=30)
    first = read_rows(out)
    assert 10 <= len(first) < n and all(r["status"] == "ok" for r in first)

    # 2. --resume (the folder spelt differently: still the same inputs), then SIGTERM: exit 130, rows kept
    args2 = cli(f"{folder}{os.sep}.", "--out", out, "--model", tiny_bundle, "--quiet", "--batch-size", "1",
                "--threads", "1")
    proc = subprocess.Popen([*args2, "--resume"], cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_rows(out, len(first) + 10, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.INTERRUPTED, err[-2000:]
    assert "interrupted" in err
    second = read_rows(out)
    assert len(first) + 10 <= len(second) < n
    assert out.read_bytes().endswith(b"\n")

    # 3. --resume completes the run: every input exactly once, identical scores (same content)
    res = subprocess.run([*args, "--resume"], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert res.returncode == ExitCode.OK, res.stderr[-2000:]
    assert f"{len(second)} already done" in res.stderr
    final = read_rows(out)
    assert sorted(path_key(r["image"]) for r in final) == sorted(str(folder / f"img_{i:04d}.jpg") for i in range(n))
    assert len({(r["MEL"], r["sha256"]) for r in final}) == 1


# ----------------------------------------------------------------------------- in-process: options and exit codes


def test_help_documents_exit_codes(capsys):
    assert batch_mod.main(["--batch", "--help"]) == 0
    text = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "130"):
        assert f"\n  {code}" in text
    assert "--resume" in text and "--metadata" in text and "--saliency-dir" in text


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--out", "x.txt"], ".csv or .jsonl"),
        (["--out", "{tmp}/o.csv", "--threads", "0"], "--threads"),
        (["--out", "{tmp}/o.csv", "--model", "{tmp}/nope.json"], "model verification failed"),
        (["--out", "{tmp}/o.csv", "--metadata", "{tmp}/nope.csv"], "--metadata"),
        (["--out", "{tmp}/missing_dir/o.csv"], "does not exist"),
        (["--out", "{tmp}/o.csv", "--frobnicate"], "unrecognized"),
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, extra, message):
    args = ["--batch", str(tmp_path), *[a.replace("{tmp}", str(tmp_path)) for a in extra]]
    assert batch_mod.main(args) == ExitCode.USAGE
    assert message in capsys.readouterr().err


def test_tampered_model_is_a_usage_error(tiny_bundle, tmp_path, capsys):
    bad = tmp_path / "model"
    shutil.copytree(tiny_bundle.parent, bad)
    onnx = next(bad.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\x00")
    assert batch_mod.main(["--batch", str(tmp_path), "--out", str(tmp_path / "o.csv"), "--model",
                           str(bad / tiny_bundle.name)]) == ExitCode.USAGE
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_jsonl_saliency_and_all_ok_exit_0(tiny_bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MENDICANT_MODEL", str(tiny_bundle))  # honoured without --model
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(3):
        (imgs / f"é {i}.jpg").write_bytes(jpeg_bytes(photo(100, 80, i)))
    out = tmp_path / "o.JSONL"
    rc = batch_mod.main(["--batch", str(imgs), "--out", str(out), "--saliency-dir", str(tmp_path / "sal"),
                         "--saliency-target", "malignancy", "--quiet"])
    err = capsys.readouterr().err
    assert rc == ExitCode.OK, err
    assert "3 ok, 0 failed" in err and "img/s" not in err
    lines = out.read_text(encoding="utf-8").splitlines()
    rows = [json.loads(x) for x in lines]
    assert [r["image"] for r in rows] == sorted(str(p) for p in imgs.iterdir())
    assert all(r["status"] == "ok" and r["error"] == "" and isinstance(r["MEL"], float) for r in rows)
    assert all(Path(r["saliency_png"]).is_file() for r in rows)
    assert "é" in lines[0]  # UTF-8, not \u escapes


def test_internal_error_exit_1_traceback_only_with_debug(tiny_bundle, tmp_path, capsys, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(batch_mod, "iter_scored", boom)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes(photo(32, 32)))
    base = ["--batch", str(tmp_path / "a.jpg"), "--model", str(tiny_bundle), "--quiet"]
    assert batch_mod.main([*base, "--out", str(tmp_path / "o1.csv")]) == ExitCode.INTERNAL_ERROR
    err = capsys.readouterr().err
    assert "kaboom" in err and "Traceback" not in err
    assert batch_mod.main([*base, "--out", str(tmp_path / "o2.csv"), "--debug"]) == ExitCode.INTERNAL_ERROR
    assert "Traceback" in capsys.readouterr().err


def test_no_inputs_found(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "o.csv"
    assert batch_mod.main(["--batch", str(tmp_path), "--out", str(out), "--model", str(tiny_bundle),
                           "--quiet"]) == ExitCode.OK
    assert "no image files found" in capsys.readouterr().err
    assert read_rows(out) == []


def test_bundled_model_on_real_images(bundled_card, shared_data, tmp_path):
    from mendicant_desktop.core.bundle import ModelBundle
    from mendicant_desktop.core.inference import Engine
    from mendicant_desktop.core.preprocess import load_image

    imgs = real_image_sample(shared_data, 2)
    out = tmp_path / "real.csv"
    res = run(*imgs, "--out", out, "--model", bundled_card, "--quiet")
    assert res.returncode == ExitCode.OK, res.stderr[-2000:]
    rows = read_rows(out)
    assert [r["image"] for r in rows] == [str(p) for p in imgs]
    engine = Engine(ModelBundle.load(bundled_card), threads=1)
    for r, p in zip(rows, imgs, strict=True):
        pred = engine.predict(load_image(p), cam=False)[0]
        assert abs(sum(float(r[c]) for c in PROBS) - 1) < 1e-5
        assert float(r["malignancy"]) == pytest.approx(pred.malignancy, abs=1e-5)
        assert r["model_sha256"] == engine.card.sha256
    pad = [r for r in rows if "pad_ufes20" in r["image"]]
    assert all(r["fst_estimate"] == "unknown" for r in pad)  # masked crops: no skin visible


def test_ctrl_c_exits_130_with_valid_rows(tiny_bundle, tmp_path, capsys):
    import threading

    src = tmp_path / "one.jpg"
    src.write_bytes(jpeg_bytes(photo(300, 200)))
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(400):
        os.symlink(src, folder / f"{i:04d}.jpg")
    out = tmp_path / "o.csv"

    def interrupt_when_rows_appear():
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if out.exists() and out.read_bytes().count(b"\n") > 5:
                break
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C; our handler runs in the main thread

    before = signal.getsignal(signal.SIGINT)
    t = threading.Thread(target=interrupt_when_rows_appear, daemon=True)
    t.start()
    rc = batch_mod.main(["--batch", str(folder), "--out", str(out), "--model", str(tiny_bundle), "--quiet",
                         "--batch-size", "1", "--threads", "1"])
    t.join(5)
    assert rc == ExitCode.INTERRUPTED, capsys.readouterr().err
    rows = read_rows(out)
    assert 5 <= len(rows) < 400 and all(r["status"] == "ok" for r in rows)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
