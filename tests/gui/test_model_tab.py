"""The Model tab renders whatever the card holds, including per-FST metrics with n and CI."""

from __future__ import annotations

import json


def test_model_tab_renders_card_metrics(qtbot, tiny_bundle, tmp_path, settings_path):
    import shutil

    from mendicant_desktop.gui.app import build_window, create_app

    folder = tmp_path / "m"
    shutil.copytree(tiny_bundle.parent, folder)
    card = folder / tiny_bundle.name
    d = json.loads(card.read_text())
    d["metrics"] = {
        "overall": {"auroc": 0.81, "auroc_ci95": [0.77, 0.85], "n": 400},
        "pad_malignancy_per_fst": {"I": {"n": 88, "auroc": 0.6, "auroc_ci95": [0.5, 0.7]},
                                   "V": {"n": 3, "auroc": None, "sufficient": False}},
    }
    d["provenance"] = {"source_network": "test", "data": {"train": "ham10000", "calibration": 128}}
    card.write_text(json.dumps(d))
    create_app()
    services, win = build_window(settings_path, card)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: services.engine is not None or services.error is not None, timeout=20_000)
    assert services.engine is not None, services.error
    txt = win.model_tab.browser.toPlainText()
    for needle in ("tiny-test-model", d["sha256"], "Verified", "pad_malignancy_per_fst", "0.810 (95% CI 0.770–0.850)", "88",
                   "Melanoma (mel)", "calibration", "0.500 = 50% (model default)"):
        assert needle in txt, needle
    win.settings.threshold = 0.3
    assert "0.300 = 30% (set in Settings" in win.model_tab.browser.toPlainText()
    win.close()


def test_tampered_model_is_refused(qtbot, tiny_bundle, tmp_path, settings_path):
    import shutil

    from mendicant_desktop.gui.app import build_window, create_app

    folder = tmp_path / "t"
    shutil.copytree(tiny_bundle.parent, folder)
    onnx = next(folder.glob("*.onnx"))
    onnx.write_bytes(onnx.read_bytes() + b"x")
    create_app()
    services, win = build_window(settings_path, folder / tiny_bundle.name)
    qtbot.addWidget(win)
    qtbot.waitUntil(lambda: services.error is not None, timeout=20_000)
    assert "does not match" in services.error
    assert "No model loaded" in win.model_tab.browser.toPlainText()
    win.close()
