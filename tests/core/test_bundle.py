"""Model bundle verification: a tampered, missing or malformed model is refused with a clear error."""

from __future__ import annotations

import json
import shutil

import pytest

from mendicant_desktop.core.bundle import ModelBundle, ModelCard
from mendicant_desktop.core.errors import ModelVerificationError


@pytest.fixture()
def bundle_dir(tiny_bundle, tmp_path):
    for f in tiny_bundle.parent.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path / tiny_bundle.name


def test_valid_bundle_loads(bundle_dir):
    b = ModelBundle.load(bundle_dir)
    assert b.card.name == "tiny-test-model"
    assert b.card.class_names == ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
    assert b.card.input_size == (254, 254)
    assert b.head["img_fc_w"].shape[1] == 264


def test_loading_by_onnx_path(bundle_dir):
    assert ModelBundle.load(bundle_dir.with_suffix(".onnx")).card.name == "tiny-test-model"


def test_tampered_model_bytes_refused(bundle_dir):
    onnx_path = bundle_dir.with_suffix(".onnx")
    data = bytearray(onnx_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelVerificationError, match="does not match its card"):
        ModelBundle.load(bundle_dir)


def test_tampered_head_refused(bundle_dir):
    head = bundle_dir.parent / "tiny-test-model.head.npz"
    data = bytearray(head.read_bytes())
    data[-100] ^= 0x01
    head.write_bytes(bytes(data))
    with pytest.raises(ModelVerificationError, match="head"):
        ModelBundle.load(bundle_dir)


def test_missing_card_and_model(bundle_dir, tmp_path):
    with pytest.raises(ModelVerificationError, match="not found"):
        ModelBundle.load(tmp_path / "absent.json")
    bundle_dir.with_suffix(".onnx").unlink()
    with pytest.raises(ModelVerificationError, match="model file not found"):
        ModelBundle.load(bundle_dir)


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda d: d.pop("sha256"), "missing required field"),
        (lambda d: d.update(sha256="zz" * 32), "hex"),
        (lambda d: d.update(threshold=1.5), "threshold"),
        (lambda d: d.update(class_names=["a", "b"]), "class_names"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["input"].pop("image"), "malformed"),
    ],
)
def test_malformed_card_refused(bundle_dir, mutate, match):
    d = json.loads(bundle_dir.read_text())
    mutate(d)
    bundle_dir.write_text(json.dumps(d))
    with pytest.raises(ModelVerificationError, match=match):
        ModelBundle.load(bundle_dir)


def test_card_not_json(bundle_dir):
    bundle_dir.write_text("{not json")
    with pytest.raises(ModelVerificationError, match="not valid JSON"):
        ModelCard.load(bundle_dir)


def test_bundled_model_verifies(bundled_card):
    b = ModelBundle.load(bundled_card)
    assert b.card.size_bytes == len(b.model_bytes)
    metrics = b.card.metrics
    assert metrics, "the shipped card must carry measured metrics"


def _reject_constant(token: str):
    raise ValueError(f"not strict JSON: {token}")


def test_write_card_writes_strict_json(tmp_path):
    """A group the build could not score (n = 0) is written as null, never as Python's bare NaN token."""
    import numpy as np

    from mendicant_desktop.core.bundle import write_card

    card = {"metrics": {"groups": {"V-VI": {"n": 0, "auroc": float("nan")}, "I-II": {"n": 40, "auroc": 0.75}},
                        "ci": [np.float32("inf"), np.float64(0.5)], "note": "NaN stays text"}}
    text = write_card(card, tmp_path / "card.json").read_text(encoding="utf-8")
    back = json.loads(text, parse_constant=_reject_constant)
    assert back["metrics"]["groups"] == {"V-VI": {"n": 0, "auroc": None}, "I-II": {"n": 40, "auroc": 0.75}}
    assert back["metrics"]["ci"] == [None, 0.5]
    assert back["metrics"]["note"] == "NaN stays text"


def test_audit_metrics_json_is_strict_with_a_card_holding_nan():
    """The bundled 0.3.0 card once held NaN: ``--audit --json`` (allow_nan=False) then died after scoring
    every image. METRICS.json embeds the card's metrics, so report_dict must make them strict."""
    from mendicant_desktop.core.report_html import AuditReport, report_dict

    card = {"name": "m", "threshold": 0.3, "metrics": {"validation": {"groups": {"V-VI": {"auroc": float("nan")}}}}}
    d = report_dict(AuditReport(result=None, model_card=card))
    out = json.loads(json.dumps(d, allow_nan=False), parse_constant=_reject_constant)
    assert out["model_card"]["metrics"]["validation"]["groups"]["V-VI"]["auroc"] is None


def test_bundled_card_is_strict_json(bundled_card):
    json.loads(bundled_card.read_text(encoding="utf-8"), parse_constant=_reject_constant)
