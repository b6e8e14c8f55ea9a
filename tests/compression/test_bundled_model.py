"""The bundled model on the CPU that runs the tests: INT8 against its committed FP32 probabilities, the gate on
the gate split against its FP32 counterpart (no prediction cache), the card's figures, the load-time kernel check.

These replace the old INT8-vs-FP32 test, which needed a git-ignored run folder and so skipped on every clean clone:
the FP32 probabilities ship beside the model (``<name>.reference_probs.csv``), and the FP32 counterpart is rebuilt
from the reference network (exported from the sklesion wheel) and the bundle's own FP32 head.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from compression.adapt import CLASSES, MAL_IDX, fp32_counterpart
from compression.gate import agreement_failures
from compression.ship_adapted import read_reference_csv
from mendicant_desktop.core.audit import auroc
from mendicant_desktop.core.bundle import ModelBundle
from mendicant_desktop.core.cpu import describe_cpu
from mendicant_desktop.core.errors import ModelVerificationError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata, encode_metadata
from mendicant_desktop.core.preprocess import load_image, preprocess

#: How far a gate figure of the same INT8 file may move between x86 CPUs with other features (VNNI or not). The
#: 7-bit model's probabilities differ by up to 0.04 between a VNNI CPU and an emulated AVX2 one
#: (benchmarks/results/int8_cpu_emulation.json). The margin is an allowance, not a measurement: a CPU on which the
#: gate's AUROCs move further fails here, and that is worth knowing.
CROSS_CPU_MARGIN = 0.01


@pytest.fixture(scope="module")
def card(bundled_card) -> dict:
    c = json.loads(bundled_card.read_text(encoding="utf-8"))
    if "self_check" not in c:
        pytest.skip("the bundled model is not an adapted-track model")
    return c


def _questions(rows: list[dict[str, str]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Row masks and labels of the three gated questions, from the reference CSV's own columns."""
    ds = np.array([r["dataset"] for r in rows])
    dx = np.array([r["dx"] for r in rows])
    mal = np.array([int(r["malignant"]) for r in rows])
    fst = np.array([r["fst"] for r in rows])
    mel_nv = (ds == "isic") & np.isin(dx, ["MEL", "NV"])
    return {
        "isic_mel_vs_nv": (mel_nv, (dx == "MEL").astype(int)),
        "pad_fst_labelled": ((ds == "pad") & (fst != "unknown"), mal),
        "fitz_malignant": (ds == "fitz", mal),
    }


def test_bundled_int8_agrees_with_its_committed_fp32_probabilities(bundled_card, card, shared_data) -> None:
    ref_csv = bundled_card.parent / card["provenance"]["reference_probabilities"]["file"]
    rows, p_ref = read_reference_csv(ref_csv)
    assert len(rows) >= 200
    engine = Engine(ModelBundle.load(bundled_card), threads=2)
    x = np.stack([preprocess(load_image(shared_data / r["relpath"]), engine.input_size) for r in rows])
    meta = np.stack([encode_metadata(Metadata(age=r["age"] or None, sex=r["sex"], site=r["site"])) for r in rows])
    p = np.concatenate([engine.run(x[s : s + 16], meta[s : s + 16])[0] for s in range(0, len(x), 16)])
    mal_f, mal_q = p_ref[:, list(MAL_IDX)].sum(1), p[:, list(MAL_IDX)].sum(1)
    from scipy.stats import spearmanr

    delta = {}
    for q, (mask, y) in _questions(rows).items():
        assert mask.sum() >= 30, q
        delta[q] = auroc(y[mask], _score(q, p[mask])) - auroc(y[mask], _score(q, p_ref[mask]))
    agree = {"top1_agreement": float((p.argmax(1) == p_ref.argmax(1)).mean()),
             "malignancy_spearman": float(spearmanr(mal_f, mal_q).statistic), "delta_auroc": delta}
    failures = agreement_failures(agree)
    gate = card["metrics"]["gate"]
    if failures and gate.get("shipped_despite_failure"):
        # A model shipped through [ship] on_failed_gate: what fails here must be a limit its card declares missed.
        declared = {m.split(":")[0] for m in gate["missed"]}
        undeclared = [f for f in failures if "INT8-vs-FP32 " + f.rsplit(" ", 3)[0] not in declared]
        assert undeclared == [], f"on {describe_cpu()}, not declared in the card: {undeclared}"
        pytest.xfail(f"the card declares these agreement limits missed, and they are missed here too: {failures}")
    assert failures == [], f"on {describe_cpu()}: {agree}"


def _score(q: str, p: np.ndarray) -> np.ndarray:
    return p[:, CLASSES.index("mel")] if q == "isic_mel_vs_nv" else p[:, list(MAL_IDX)].sum(1)


def test_kernel_check_runs_at_load_and_passes_here(bundled_card, card) -> None:
    engine = Engine(ModelBundle.load(bundled_card), threads=2)
    res = engine.self_check
    assert res.status == "passed", res.summary()
    assert res.n == card["self_check"]["n"] and res.max_abs_diff <= card["self_check"]["tolerance"]


def test_kernel_check_refuses_when_this_cpu_disagrees(bundled_card, card, tmp_path) -> None:
    """A bundle whose stored FP32 outputs the kernels cannot reproduce (as on a saturating CPU) is refused."""
    import hashlib

    folder = tmp_path / "models"
    shutil.copytree(bundled_card.parent, folder)
    c = json.loads((folder / bundled_card.name).read_text(encoding="utf-8"))
    check = folder / c["self_check"]["file"]
    with np.load(check) as z:
        arrs = {k: z[k] for k in z.files}
    arrs["probs_reference"] = arrs["probs_reference"][:, ::-1].copy()  # what a broken kernel would give
    if "probs_int8_build" in arrs:  # the tight half of the check: the build machine's INT8 outputs
        arrs["probs_int8_build"] = np.clip(arrs["probs_int8_build"] + 0.05, 0, 1)
    np.savez_compressed(check, **arrs)
    c["self_check"]["sha256"] = hashlib.sha256(check.read_bytes()).hexdigest()
    (folder / bundled_card.name).write_text(json.dumps(c), encoding="utf-8")
    bundle = ModelBundle.load(folder / bundled_card.name)
    with pytest.raises(ModelVerificationError, match="cannot be trusted"):
        Engine(bundle, threads=1)


def test_gate_passes_on_the_bundled_model_and_reproduces_the_card(bundled_card, card, shared_data, tmp_path,
                                                                  monkeypatch) -> None:  # fmt: skip
    """The full gate, computed here on the gate split with no prediction cache (2-3 min on a VNNI laptop's 2 cores,
    about 8 min on an AVX2-only EPYC's). A model shipped despite a failed gate must fail it the way its card says."""
    from compression.config import load_config
    from compression.gate import run_gate
    from tests.compression._tiny import fp32_reference_or_skip

    monkeypatch.setenv("MENDICANT_SHARED_DATA", str(shared_data))
    backbone = fp32_reference_or_skip(export=True)
    teacher = fp32_counterpart(bundled_card.parent / card["file"], backbone, tmp_path / "teacher_fp32.onnx")
    cfg = load_config()
    res = run_gate(cfg, bundled_card.parent / card["file"], teacher,
                   expected_split_sha=card["provenance"]["splits"]["sha256"], n_boot=0)  # fmt: skip
    failed = [c for c in res["checks"] if not c["met"]]
    # Every check but latency (a property of the CPU: INT8 is no faster than FP32 without VNNI) has the outcome the
    # card recorded. On a CPU with the build machine's features the same file gives the same outputs; on another
    # (VNNI or not) the 7-bit INT8 kernels differ slightly, so there a check within CROSS_CPU_MARGIN of its bound
    # may come out either way, and the AUROCs may move by up to that margin.
    same_cpu = describe_cpu() == card["provenance"]["build"]["cpu_summary"]
    margin = 0.005 if same_cpu else CROSS_CPU_MARGIN
    recorded = {c["name"]: c for c in card["metrics"]["gate"]["checks"]}
    here = {c["name"]: c for c in res["checks"]}
    assert set(here) == set(recorded)
    changed = [n for n, c in here.items() if c["met"] != recorded[n]["met"] and not n.startswith("latency")
               and (same_cpu or abs(recorded[n]["value"] - recorded[n]["bound"]) > margin)]
    assert changed == [], f"on {describe_cpu()} these checks differ from the card's: {changed}"
    for q, fig in card["metrics"]["validation"].items():
        if fig.get("auroc") is not None:
            assert abs(res["candidate"]["metrics"][q]["auroc"] - fig["auroc"]) <= margin, q
    for q, fig in card["metrics"]["teacher_fp32_validation"].items():  # FP32: no INT8 kernels involved
        if fig.get("auroc") is not None:
            assert abs(res["teacher"]["metrics"][q]["auroc"] - fig["auroc"]) <= 0.005, q
    if failed and card["metrics"]["gate"].get("shipped_despite_failure"):
        pytest.xfail(f"the gate fails on {describe_cpu()}, as the card declares (shipped through [ship] "
                     f"on_failed_gate): {[c['name'] for c in failed]}")
    assert res["gate_passed"], f"gate failed on {describe_cpu()}: {failed}"
