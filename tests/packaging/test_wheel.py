"""The installed app must carry its bundled model: Quickstart's first command runs from site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.packaging


def test_wheel_contains_model_card_head_styles_and_config(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel here: {res.stderr.strip()[-200:]}")
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("mendicant_desktop-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    cards = sorted((REPO / "resources" / "models").glob("*.json"))
    assert cards, "no bundled model card"
    for card in cards:
        stem = card.name[: -len(".json")]
        for suffix in (".json", ".onnx", ".head.npz"):
            assert f"mendicant_desktop/resources/models/{stem}{suffix}" in names
    assert "mendicant_desktop/resources/styles/mendicant.qss" in names
    assert "mendicant_desktop/resources/skintone/fst_colour_logreg.json" in names
    assert "compression/config.toml" in names
    assert not any(n.startswith("tests/") for n in names)
    # --serve from an installed wheel: the server package, the app layer under it, and the [server] extra
    assert {"mendicant_desktop/server/app.py", "mendicant_desktop/server/run.py",
            "mendicant_desktop/app/assessment.py", "mendicant_desktop/cli/serve.py"} <= names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "Provides-Extra: server" in text
    for dep in ("fastapi", "uvicorn", "python-multipart", "prometheus-client", "pydantic", "fastapi-offline"):
        assert f'Requires-Dist: {dep}' in text and 'extra == "server"' in text, dep
