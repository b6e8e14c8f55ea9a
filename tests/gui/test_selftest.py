"""``mendicant-desktop --selftest --screenshot`` in a subprocess, as a user (or the installer) runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def _run(args, tmp_path, **env):
    e = {k: v for k, v in os.environ.items() if k != "MENDICANT_MODEL"}
    e.update(QT_QPA_PLATFORM="offscreen", MENDICANT_CONFIG_DIR=str(tmp_path / "cfg"), **env)
    return subprocess.run([sys.executable, "-m", "mendicant_desktop", *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=180)


def test_selftest_with_screenshot(tiny_bundle, tmp_path):
    shot = tmp_path / "shots" / "selftest.png"
    r = _run(["--selftest", "--screenshot", str(shot)], tmp_path, MENDICANT_MODEL=str(tiny_bundle))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selftest OK" in r.stdout and "overlay shown" in r.stdout
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    from PIL import Image

    assert Image.open(shot).size == (1280, 800)
    assert not (tmp_path / "cfg").exists()  # the self-test never writes the user's settings


def test_selftest_fails_cleanly_without_a_valid_model(tmp_path):
    bad = tmp_path / "card.json"
    bad.write_text("{not json")
    r = _run(["--selftest", "--model", str(bad)], tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "selftest FAILED" in r.stderr and "not valid JSON" in r.stderr


def test_selftest_with_the_bundled_model(bundled_card, tmp_path):
    """The shipped model: verified by sha256, loaded, a generated image scored and displayed."""
    r = _run(["--selftest"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "selftest OK" in r.stdout and bundled_card.stem in r.stdout
