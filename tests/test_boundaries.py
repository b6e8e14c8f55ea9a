"""Architecture boundaries: import-linter contracts and a live check that core loads no Qt or torch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_import_linter_contracts_hold():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install .[test])")
    res = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "broken" not in res.stdout.lower() or "0 broken" in res.stdout.lower()


@pytest.mark.parametrize(
    "module", ["mendicant_desktop.core", "mendicant_desktop.core.inference", "mendicant_desktop.core.audit",
               "mendicant_desktop.cli.main", "mendicant_desktop.cli.batch"],
)
def test_headless_modules_load_no_qt_or_torch(module):
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        "bad = [m for m in ('torch', 'PySide6', 'shiboken6', 'compression', 'keras') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{module} imported: {res.stdout.strip()} {res.stderr[-500:]}"
