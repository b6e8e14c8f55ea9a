"""The validation gate: MAC counting, limit checks, refusal of failing candidates, and the exit status.

Fast: tiny random ReferenceNets exported by ``compression.export`` and a synthetic evaluation set whose labels
are derived from the teacher's own scores (so the teacher's AUROCs are 1 and a broken candidate must fail).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from compression import validate as V  # noqa: E402
from compression.data import CLASSES, Record  # noqa: E402
from compression.export import export_onnx  # noqa: E402
from compression.quantize import ort_session  # noqa: E402
from tests.compression._tiny import spread_tiny_model  # noqa: E402

# --------------------------------------------------------------------------------------------------
# MAC counter
# --------------------------------------------------------------------------------------------------


def _tiny_graph(path):
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b1 = np.zeros(4, np.float32)
    w2 = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)  # depthwise, stride 2
    w3 = rng.standard_normal((64, 5)).astype(np.float32)
    b3 = np.zeros(5, np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], group=4, name="dw"),
        helper.make_node("Flatten", ["c2"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"), (b3, "b3"))],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_mac_counter_matches_hand_computed_convs(tmp_path):
    path = _tiny_graph(tmp_path / "g.onnx")
    conv1 = 4 * 8 * 8 * (3 * 3 * 3)  # Cout * Hout * Wout * Cin * kh * kw
    dw = 4 * 4 * 4 * (1 * 3 * 3)  # depthwise: Cin/groups = 1, stride 2 -> 4x4
    fc = 64 * 5
    res = V.count_macs_params(path)
    assert res["macs"] == conv1 + dw + fc == 6912 + 576 + 320
    assert res["macs_by_op"] == {"Conv": conv1 + dw, "Gemm": fc}
    assert res["params"] == 4 * 27 + 4 + 4 * 9 + 64 * 5 + 5
    assert V.count_macs_params(path, batch=3)["macs"] == 3 * res["macs"]
    assert res["unresolved"] == []


# --------------------------------------------------------------------------------------------------
# Tiny teacher / candidates and a synthetic evaluation set
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.set_num_threads(min(2, torch.get_num_threads()))
    d = tmp_path_factory.mktemp("gate")
    teacher = spread_tiny_model(0)
    paths = {"teacher": export_onnx(teacher, d / "teacher.onnx"), "broken": export_onnx(spread_tiny_model(1), d / "broken.onnx")}
    same = d / "same.onnx"
    shutil.copyfile(paths["teacher"], same)
    paths["same"] = same
    # over-size: the teacher plus a 31 MB initializer that nothing reads
    m = onnx.load(str(paths["teacher"]))
    m.graph.initializer.append(numpy_helper.from_array(np.zeros(31_000_000 // 4 + 1000, np.float32), "padding"))
    big = d / "oversize.onnx"
    onnx.save(m, str(big))
    paths["oversize"] = big
    return teacher, paths


@pytest.fixture(scope="module")
def evalset(models):
    """40 ISIC external MEL/NV + 2 x 32 PAD images (FST II, III); labels from the teacher's own scores."""
    _, paths = models
    rng = np.random.default_rng(3)
    n_isic, n_pad = 40, 64
    n = n_isic + n_pad
    images = rng.uniform(0, 255, (n, 254, 254, 3)).astype(np.float32)
    meta = np.zeros((n, 10), np.float32)
    meta[:, 2], meta[:, 7], meta[:, 9] = 1, 1, 1
    p = ort_session(paths["teacher"], 2).run(["probs"], {"image": images, "meta": meta})[0]
    mel = p[:n_isic, CLASSES.index("mel")]
    mal = V.malignancy(p[n_isic:])
    records = []
    for i in range(n_isic):
        dx = "MEL" if mel[i] > np.median(mel) else "NV"
        records.append(Record(dataset="isic", pool="external", image=f"i{i}.jpg", relpath=f"isic/i{i}.jpg", dx=dx,
                              dx7=dx.lower(), label=0,
                              malignant=int(dx == "MEL"), split="val", sha256=f"isic{i:04d}"))  # fmt: skip
    for j in range(n_pad):
        fst = "II" if j % 2 == 0 else "III"
        same_group = mal[(np.arange(n_pad) % 2) == (j % 2)]
        malignant = int(mal[j] > np.median(same_group))
        records.append(Record(dataset="pad", pool="pad", image=f"p{j}.png", relpath=f"pad/p{j}.png",
                              dx="BCC" if malignant else "NEV", dx7="bcc" if malignant else "nv", label=0,
                              malignant=malignant, patient_id=f"P{j}", fst=fst, fst_source="label", split="val",
                              sha256=f"pad{j:04d}"))  # fmt: skip
    return V.EvalSet(records=records, images=images, meta=meta, source="synthetic")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MENDICANT_CACHE", str(tmp_path / "cache"))


def _run(models, evalset, name, **kw):
    _, paths = models
    return V.validate(paths[name], teacher=paths["teacher"], es=evalset, cfg=None, rounds=3, n_boot=50,
                      log=lambda *_: None, **kw)  # fmt: skip


def _row(res, kind, name_start):
    rows = [r for r in res["checks"] if r["kind"] == kind and r["name"].startswith(name_start)]
    assert len(rows) == 1, rows
    return rows[0]


def test_mac_counter_agrees_with_torch_count(models):
    from compression.prune import count_macs

    teacher, paths = models
    assert V.count_macs_params(paths["teacher"])["macs"] == count_macs(teacher)


def test_gate_passes_teacher_relative_limits_for_a_copy_of_the_teacher(models, evalset):
    res = _run(models, evalset, "same")
    assert res["candidate"]["isic_external_mel_vs_nv"]["auroc"] == pytest.approx(1.0)
    assert res["top1_agreement"] == 1.0
    for name in ("size", "ISIC external", "PAD malignancy", "PAD per-FST"):
        assert _row(res, "limit", name)["met"] is True, name
    assert res["candidate"]["pad_malignancy"]["gap_groups"] == ["II", "III"]
    assert res["paired"]["auroc_gap_diff"]["value"] == 0.0 and res["paired"]["auroc_gap_diff"]["resolved"] == "met"
    assert "paired bootstrap, candidate - teacher" in V.format_table(res)
    nm = res["pad_fst_labelled_without_metadata"]  # scored again with the metadata left out
    assert nm["n"] == 64 and nm["candidate"]["auroc"] == nm["teacher"]["auroc"]
    assert "with age/sex/site left out" in V.format_table(res)
    # the copy is not faster than the teacher: the latency limit is evaluated (and will normally miss)
    lat = _row(res, "limit", "latency")
    assert lat["value"] == pytest.approx(res["latency"]["ratio_p50"])
    assert res["gate_passed"] is (lat["met"] is True)
    assert res["macs_ratio"] == 1.0


def test_gate_refuses_a_broken_model(models, evalset):
    res = _run(models, evalset, "broken")
    assert res["gate_passed"] is False
    assert _row(res, "limit", "ISIC external")["met"] is False
    assert "GATE: FAILED" in V.format_table(res)


def test_gate_refuses_an_oversize_model(models, evalset, tmp_path):
    out = tmp_path / "res.json"
    res = _run(models, evalset, "oversize", out=out)
    size = _row(res, "limit", "size")
    assert res["size_mb"] > 30 and size["met"] is False
    assert res["gate_passed"] is False
    assert out.is_file() and '"gate_passed": false' in out.read_text()
    table = V.format_table(res)
    assert "MISSED" in table and "size (MB)" in table


def test_main_exits_non_zero_on_a_missed_limit(models, evalset, monkeypatch, capsys, tmp_path):
    _, paths = models
    monkeypatch.setattr(V, "eval_set", lambda cfg, split="val", log=print: evalset)
    rc = V.main([str(paths["oversize"]), "--teacher", str(paths["teacher"]), "--rounds", "2", "--n-boot", "20",
                 "--out", str(tmp_path / "o.json")])  # fmt: skip
    assert rc == 1
    assert "GATE: FAILED" in capsys.readouterr().out
    assert V.main([str(tmp_path / "missing.onnx"), "--teacher", str(paths["teacher"])]) == 2


def test_teacher_predictions_are_cached(models, evalset, tmp_path):
    _, paths = models
    first = V.cached_probs(paths["teacher"], evalset)
    cache_files = list(V.prediction_cache_dir().glob("*.npz"))
    assert len(cache_files) == 1
    again = V.cached_probs(paths["teacher"], evalset)
    assert np.array_equal(first, again)


# --------------------------------------------------------------------------------------------------
# Limit logic on synthetic results
# --------------------------------------------------------------------------------------------------


def _result(size=20.0, lat=0.3, ext=(0.74, 0.74), pad=(0.56, 0.56), gap=(0.05, 0.05), macs=1.0):
    def side(e, p, g):
        return {"isic_external_mel_vs_nv": {"auroc": e},
                "pad_malignancy": {"overall": {"auroc": p}, "auroc_gap": g, "groups": {}}}  # fmt: skip

    return {"size_mb": size, "latency": {"ratio_p50": lat}, "macs_ratio": macs,
            "candidate": side(ext[0], pad[0], gap[0]), "teacher": side(ext[1], pad[1], gap[1])}  # fmt: skip


def _limits_met(res):
    rows = V.gate_checks(res, V.GATE_FALLBACK, V.TARGETS_FALLBACK)
    return {r["name"]: r["met"] for r in rows if r["kind"] == "limit"}


def test_gate_limits_logic():
    assert all(_limits_met(_result()).values())
    assert _limits_met(_result(size=30.0))["size (MB)"] is False  # strictly below 30 MB
    assert _limits_met(_result(size=29.99))["size (MB)"] is True
    assert _limits_met(_result(lat=0.5))["latency / teacher (p50, batch 1)"] is True
    assert _limits_met(_result(lat=0.51))["latency / teacher (p50, batch 1)"] is False
    assert _limits_met(_result(ext=(0.72, 0.74)))["ISIC external mel-vs-nv AUROC"] is True  # exactly -0.02
    assert _limits_met(_result(ext=(0.7199, 0.74)))["ISIC external mel-vs-nv AUROC"] is False
    assert _limits_met(_result(pad=(0.53, 0.56)))["PAD malignancy AUROC"] is False
    assert _limits_met(_result(gap=(0.055, 0.05)))["PAD per-FST AUROC gap"] is True
    assert _limits_met(_result(gap=(0.06, 0.05)))["PAD per-FST AUROC gap"] is False
    # no sufficient groups on either side: not applicable, not a failure
    assert _limits_met(_result(gap=(float("nan"), float("nan"))))["PAD per-FST AUROC gap"] is None
    # measurable for the teacher but not for the candidate (NaN scores): a failure, never "not applicable"
    assert _limits_met(_result(ext=(float("nan"), 0.74)))["ISIC external mel-vs-nv AUROC"] is False
    assert _limits_met(_result(gap=(float("nan"), 0.05)))["PAD per-FST AUROC gap"] is False


def test_limits_come_from_the_config_and_match_the_fallback():
    from compression.config import load_config

    cfg = load_config()
    gate, targets = V.gate_limits(cfg)
    assert gate == V.GATE_FALLBACK
    assert targets == V.TARGETS_FALLBACK


# --------------------------------------------------------------------------------------------------
# The gate on the committed artifact (CI): real data, real teacher
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gate_passes_on_the_bundled_model(bundled_card, shared_data, monkeypatch, capsys, tmp_path):
    """The FairPrune track's gate (``python -m compression.validate``) on a bundled FairPrune model."""
    from tests.compression._tiny import fp32_reference_or_skip

    if "self_check" in json.loads(bundled_card.read_text(encoding="utf-8")):
        pytest.skip("the bundled model is an adapted-track model: its gate runs in tests/compression/test_bundled_model.py")

    monkeypatch.delenv("MENDICANT_CACHE", raising=False)  # reuse the developer's prediction cache if present
    fp32_reference_or_skip(export=False)  # validate exports it itself when only the wheel is cached
    out = tmp_path / "gate.json"
    rc = V.main([str(bundled_card), "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    res = json.loads(out.read_text())
    assert res["data"]["ham10000"] == 0 and res["data"]["n"] >= 300
    assert res["seconds"] < 300, f"the gate took {res['seconds']} s (limit 5 min)"


def _paired_case(seed=0):
    """60 ISIC MEL/NV + PAD FST II/III (40 each, half malignant) + 10 PAD without a clinician FST."""
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(60):
        dx = "MEL" if i % 2 else "NV"
        recs.append(Record(dataset="isic", pool="external", image=f"i{i}", relpath=f"i{i}", dx=dx, dx7=dx.lower(),
                           label=0, malignant=int(dx == "MEL"), split="val"))  # fmt: skip
    for j in range(90):
        fst, src = ("II", "label") if j < 40 else ("III", "label") if j < 80 else ("unknown", "estimated")
        mal = int(j % 2 == 0) if j < 80 else 0
        recs.append(Record(dataset="pad", pool="pad", image=f"p{j}", relpath=f"p{j}", dx="BCC" if mal else "ACK",
                           dx7="bcc" if mal else "akiec", label=0, malignant=mal, patient_id=f"P{j}", fst=fst,
                           fst_source=src, split="val"))  # fmt: skip
    probs = rng.dirichlet(np.ones(7), size=len(recs))
    return recs, probs


def test_paired_differences_of_a_copy_are_zero_and_resolved():
    recs, p = _paired_case()
    gate = dict(V.GATE_FALLBACK)
    res = V.paired_differences(p, p.copy(), recs, gate, n_boot=200, seed=1)
    assert res["gap_groups"] == ["II", "III"]
    for key in ("isic_external_auroc_diff", "pad_auroc_diff", "auroc_gap_diff"):
        assert res[key]["value"] == pytest.approx(0.0, abs=1e-12)
        assert res[key]["ci95"] == pytest.approx([0.0, 0.0], abs=1e-12)
        assert res[key]["resolved"] == "met"
    with pytest.raises(ValueError, match="shapes differ"):
        V.paired_differences(p, p[:-1], recs, gate, n_boot=10)


def test_paired_differences_point_values_and_resolution():
    recs, p_t = _paired_case()
    gate = dict(V.GATE_FALLBACK)
    y = np.array([r.malignant for r in recs])
    bcc, nv = CLASSES.index("bcc"), CLASSES.index("nv")

    def perfect(p, rows):
        p[rows] = 0.0
        p[rows, bcc] = np.where(y[rows] == 1, 0.9, 0.1)
        p[rows, nv] = 1 - p[rows, bcc]

    # The teacher ranks both FST groups perfectly (gap 0 on every resample); the candidate keeps FST II perfect
    # but scores FST III at random: its gap widens by about 0.5.
    labelled = np.array([r.dataset == "pad" and r.fst in ("II", "III") for r in recs])
    perfect(p_t, labelled)
    p_c = p_t.copy()
    iii = np.array([r.dataset == "pad" and r.fst == "III" for r in recs])
    p_c[iii] = np.random.default_rng(5).dirichlet(np.ones(7), size=int(iii.sum()))
    res = V.paired_differences(p_c, p_t, recs, gate, n_boot=300, seed=2)
    ev_c, ev_t = V.evaluate(p_c, recs, n_boot=0), V.evaluate(p_t, recs, n_boot=0)
    gap_c, gap_t = ev_c["pad_malignancy"]["auroc_gap"], ev_t["pad_malignancy"]["auroc_gap"]
    assert res["auroc_gap_diff"]["value"] == pytest.approx(gap_c - gap_t)
    assert res["pad_auroc_diff"]["value"] == pytest.approx(
        ev_c["pad_malignancy"]["overall"]["auroc"] - ev_t["pad_malignancy"]["overall"]["auroc"]
    )
    assert res["isic_external_auroc_diff"]["value"] == pytest.approx(0.0)  # ISIC rows unchanged
    # the biopsied (FST-labelled) PAD subset leaves out the 10 PAD images without a clinician FST
    assert res["pad_fst_labelled_auroc_diff"]["value"] == pytest.approx(
        ev_c["pad_malignancy_fst_labelled"]["auroc"] - ev_t["pad_malignancy_fst_labelled"]["auroc"]
    )
    assert ev_c["pad_malignancy_fst_labelled"]["n"] == 80 and ev_c["pad_malignancy"]["overall"]["n"] == 90
    lo, hi = res["auroc_gap_diff"]["ci95"]
    assert lo <= res["auroc_gap_diff"]["value"] <= hi
    assert gap_t == 0.0 and gap_c > 0.25 and res["auroc_gap_diff"]["resolved"] == "missed"
    assert res["pad_auroc_diff"]["value"] < 0



def test_labelled_set_audit_reads_fitzpatrick17k_labels(tiny_bundle, shared_data, tmp_path):
    """``validate --labels``: Fitzpatrick17k's own labels.csv through the app's reader and audit run."""
    from compression.validate import audit_labelled_set, format_labelled_set, main
    from tests.conftest import read_labels
    from tests.support.fitzpatrick import f17_subset

    labels = tmp_path / "labels.csv"
    pick = f17_subset(read_labels(shared_data, "fitzpatrick17k_clinical"), labels, ("2", "5", "6"), 4)
    d = audit_labelled_set(tiny_bundle, labels, shared_data / "fitzpatrick17k_clinical" / "images", grouping="ddi",
                           n_boot=20, threads=1)
    assert d["n_audited"] == len(pick) == 36 and d["fst_source_counts"] == {"label": 36}
    assert set(d["malignant_vs_rest"]["groups"]) == {"I-II", "V-VI"}
    assert d["malignant_vs_benign_neoplasm"]["overall"]["n"] == 24
    text = format_labelled_set(d)
    assert "malignant vs the rest: overall" in text and "malignant vs benign neoplasms: overall" in text
    assert "V-VI insufficient (n=24)" in text  # 24 < 30: withheld, never a bare number
    assert main([str(tiny_bundle), "--labels", str(tmp_path / "missing.csv")]) == 2  # refused before the gate runs
