"""Load a script of ``benchmarks/`` as a module (they are scripts, not a package), for the doc-matches-JSON tests."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from tests.conftest import REPO


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` imported under the module name ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
