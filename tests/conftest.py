"""Shared fixtures. Tests that need the real data or the reference wheel skip with a reason."""

from __future__ import annotations

import csv
import gc
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MENDICANT_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.fixture(autouse=True)
def _collect_cycles_on_the_main_thread():
    """Once a GUI test has started the app's collector, automatic collection stays off for the session
    (mendicant_desktop.gui.gc_guard): collect what is due after each test, on the main thread, as CPython would."""
    yield
    if not gc.isenabled():
        from mendicant_desktop.gui.gc_guard import collect_due

        collect_due(gc.get_threshold())


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repo; skips when absent (CI has it)."""
    if not (SHARED_DATA / "isic_dermoscopy" / "labels.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (../shared/data beside the repo)")
    return SHARED_DATA


def read_labels(data: Path, dataset: str) -> list[dict[str, str]]:
    with open(data / dataset / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """Card path of a tiny random model with the real interface (fast engine/CLI/GUI tests)."""
    from tests.support.tiny_model import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def bundled_card() -> Path:
    """Card of the model shipped in resources/models; skips if none is bundled yet."""
    cards = sorted((REPO / "resources" / "models").glob("*.json"))
    if not cards:
        pytest.skip("no bundled model in resources/models")
    return cards[0]
