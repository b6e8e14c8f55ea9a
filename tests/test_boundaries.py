"""Architecture boundaries: import-linter contracts and a live check that core loads no Qt or torch."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO


def test_import_linter_contracts_hold():
    """Every contract kept, the layers contract among them. A missing import-linter fails: CI must check."""
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is not installed: pip install '.[test]' (the boundaries must be checked)"
    res = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout.lower(), res.stdout
    assert "layers: gui | cli | server above app above core KEPT" in res.stdout, res.stdout


def test_no_gui_module_imports_cli():
    """Said twice on purpose: the layers contract forbids it, and this reads the sources without import-linter."""
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "mendicant_desktop" / "gui").rglob("*.py")
                 if "mendicant_desktop.cli" in p.read_text(encoding="utf-8")]
    assert offenders == []


@pytest.mark.parametrize(
    "module", ["mendicant_desktop.core", "mendicant_desktop.core.inference", "mendicant_desktop.core.audit",
               "mendicant_desktop.app", "mendicant_desktop.app.scoring", "mendicant_desktop.app.audit_run",
               "mendicant_desktop.cli.main", "mendicant_desktop.cli.batch", "mendicant_desktop.cli.audit"],
)
def test_headless_modules_load_no_qt_or_torch(module):
    code = (
        f"import importlib, sys; importlib.import_module({module!r}); "
        "bad = [m for m in ('torch', 'PySide6', 'shiboken6', 'compression', 'keras') if m in sys.modules]; "
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"{module} imported: {res.stdout.strip()} {res.stderr[-500:]}"
