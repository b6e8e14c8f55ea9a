"""A low-quality warning (blur, exposure, tiny lesion) appears in the window, in the session CSV and in the
``--batch`` row alike: the same words for the same file."""

from __future__ import annotations

import csv

import numpy as np
from PIL import Image, ImageFilter

from mendicant_desktop.app.rows import WARNING_SEPARATOR
from mendicant_desktop.cli import batch as batch_mod
from tests.support.synthetic import skin, spot


def test_quality_warnings_in_the_window_the_csv_and_the_batch_row(qtbot, window, tmp_path, tiny_bundle):
    from tests.gui.conftest import wait_all_scored

    d = tmp_path / "imgs"
    d.mkdir()
    files = {
        "blurred.png": Image.fromarray(spot(skin(), 90)).filter(ImageFilter.GaussianBlur(8)),
        "dark.png": Image.fromarray((spot(skin(), 90).astype(np.float32) * 0.2).astype(np.uint8)),
        "bright.png": Image.fromarray(np.where(np.arange(640)[None, :, None] < 200, 255, spot(skin(), 90))
                                      .astype(np.uint8)),
        "tiny.png": Image.fromarray(spot(skin(), 16)),
    }
    want = {"blurred.png": "Heavy blur", "dark.png": "Underexposed", "bright.png": "Overexposed",
            "tiny.png": "Tiny lesion"}
    for name, im in files.items():
        im.save(d / name)
    cases = window.add_paths([d / n for n in files])
    wait_all_scored(qtbot, window)
    view = window.assess.view
    shown = {}
    for c in cases:
        window.assess.list.setCurrentIndex(window.assess.model.index(window.assess.model.cases.index(c)))
        qtbot.waitUntil(lambda c=c: view.case is c, timeout=5000)
        shown[c.path.name] = view.warn_text.text()
        assert any(w.startswith(want[c.path.name]) for w in c.warnings), (c.path.name, c.warnings)
        assert want[c.path.name] in shown[c.path.name] and view.warn_card.isVisibleTo(view)
    with open(window.export_csv(str(tmp_path / "s.csv")), encoding="utf-8") as fh:
        gui = {r["image"]: r["warnings"] for r in csv.DictReader(fh)}
    out = tmp_path / "b.csv"
    assert batch_mod.main(["--batch", str(d), "--out", str(out), "--model", str(tiny_bundle), "--quiet"]) == 0
    with open(out, encoding="utf-8") as fh:
        batch = {r["image"]: r["warnings"] for r in csv.DictReader(fh)}
    for name, prefix in want.items():
        key = str(d / name)
        assert gui[key] == batch[key], name
        assert any(w.startswith(prefix) for w in batch[key].split(WARNING_SEPARATOR)), (name, batch[key])
