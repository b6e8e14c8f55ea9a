"""The bundled model on the CPU that runs the tests: INT8 against its committed FP32 probabilities, the gate on
the gate split against its FP32 counterpart (no prediction cache), the card's figures, the load-time kernel check.

These replace the old INT8-vs-FP32 test, which needed a git-ignored run folder and so skipped on every clean clone:
the FP32 probabilities ship beside the model (``<name>.reference_probs.csv``), and the FP32 counterpart is rebuilt
from the reference network (exported from the sklesion wheel) and the bundle's own FP32 head.

The INT8 model is scored once on the gate split (module fixture, ~5 min on a 2-core AVX2 CPU) for both tests. The
FP32 side of the gate comes from ``tests/fixtures/bundled_gate_fp32.json`` (``python -m tests.support.gate_reference``):
FP32 does not depend on the INT8 kernels, and scoring it here too would double the suite's longest test. A sample of
its rows is re-scored here to prove the fixture belongs to this FP32 counterpart.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from compression.adapt import CLASSES, MAL_IDX, fp32_counterpart, load_split, ort_probs
from compression.gate import agreement_failures
from compression.ship_adapted import read_reference_csv
from mendicant_desktop.core.audit import auroc
from mendicant_desktop.core.bundle import ModelBundle
from mendicant_desktop.core.cpu import describe_cpu
from mendicant_desktop.core.errors import ModelVerificationError
from mendicant_desktop.core.inference import Engine
from mendicant_desktop.core.metadata import Metadata, encode_metadata
from mendicant_desktop.core.preprocess import load_image, preprocess
from tests.support import gate_reference

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


#: FP32 rows of the fixture re-scored here (spread over the gate split), and how close they must come.
FP32_SPOT_ROWS = 24
FP32_SPOT_TOL = 1e-4


@pytest.fixture(scope="module")
def gate_split(shared_data):
    from compression.config import load_config

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MENDICANT_SHARED_DATA", str(shared_data))
        cfg = load_config()
        return cfg, load_split(cfg)


@pytest.fixture(scope="module")
def gate_int8(bundled_card, card, gate_split) -> dict[str, np.ndarray]:
    """The bundled INT8 model's probabilities on every gate image, by relative path (scored once, here)."""
    cfg, sd = gate_split
    assert card["provenance"]["splits"]["sha256"] == sd.sha256, "the data or the split rule changed since the ship"
    gate = sd.rows("gate")
    p = ort_probs(bundled_card.parent / card["file"], sd.records, gate, sd.shared, threads=cfg.run.threads)
    return {sd.records[int(i)].relpath: p[k] for k, i in enumerate(gate)}


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


#: Reference rows also scored through the app's own engine, which must give the gate's probabilities.
ENGINE_ROWS = 16


def test_bundled_int8_agrees_with_its_committed_fp32_probabilities(bundled_card, card, shared_data,
                                                                   gate_int8) -> None:  # fmt: skip
    ref_csv = bundled_card.parent / card["provenance"]["reference_probabilities"]["file"]
    rows, p_ref = read_reference_csv(ref_csv)
    assert len(rows) >= 200
    p = np.stack([gate_int8[r["relpath"]] for r in rows])
    # The app's path (Engine: the bundle, the app's preprocessing and metadata encoding) gives the same numbers.
    engine = Engine(ModelBundle.load(bundled_card), threads=2)
    sub = rows[:ENGINE_ROWS]
    x = np.stack([preprocess(load_image(shared_data / r["relpath"]), engine.input_size) for r in sub])
    meta = np.stack([encode_metadata(Metadata(age=r["age"] or None, sex=r["sex"], site=r["site"])) for r in sub])
    p_app = np.concatenate([engine.run(x[s : s + 8], meta[s : s + 8])[0] for s in range(0, len(x), 8)])
    np.testing.assert_allclose(p_app, p[:ENGINE_ROWS], atol=1e-4)
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


def test_gate_passes_on_the_bundled_model_and_reproduces_the_card(bundled_card, card, gate_split, gate_int8,
                                                                  tmp_path) -> None:  # fmt: skip
    """The full gate on the gate split, INT8 scored here (no prediction cache), FP32 from the committed fixture
    (a sample re-scored here), latency with both files. A model shipped despite a failed gate must fail it the way
    its card says."""
    from compression.gate import run_gate
    from tests.compression._tiny import fp32_reference_or_skip

    cfg, sd = gate_split
    head, relpaths, p_fp32 = gate_reference.read()
    regen = "regenerate it with `python -m tests.support.gate_reference` and commit it with the model"
    assert head["model"]["int8_sha256"] == card["sha256"], f"the FP32 fixture belongs to another model: {regen}"
    assert head["split_sha256"] == sd.sha256, f"the FP32 fixture belongs to another split: {regen}"
    gate = sd.rows("gate")
    assert relpaths == [sd.records[int(i)].relpath for i in gate], f"the fixture's gate rows differ: {regen}"
    backbone = fp32_reference_or_skip(export=True)
    teacher = fp32_counterpart(bundled_card.parent / card["file"], backbone, tmp_path / "teacher_fp32.onnx")
    spot = np.linspace(0, len(gate) - 1, FP32_SPOT_ROWS).astype(int)
    p_spot = ort_probs(teacher, sd.records, gate[spot], sd.shared, threads=cfg.run.threads)
    assert np.abs(p_spot - p_fp32[spot]).max() <= FP32_SPOT_TOL, (
        f"this FP32 counterpart does not give the fixture's probabilities: {regen}")
    p_int8 = np.stack([gate_int8[r] for r in relpaths])
    res = run_gate(cfg, bundled_card.parent / card["file"], teacher, expected_split_sha=sd.sha256, n_boot=0,
                   teacher_probs=p_fp32, candidate_probs=p_int8, split=sd)
    assert res["probabilities"] == {"candidate": "given", "teacher": "given"}
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
