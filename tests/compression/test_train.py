"""compression.train: KD loss, prefix/suffix split, augmentation, metrics and a tiny trainer run with resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from compression.config import load_config
from compression.prune import save_student
from compression.train import (
    PruningTrainer,
    augment_image,
    dihedral,
    distillation_loss,
    fallback_epoch,
    kd_loss,
    prefix_forward,
    rank_pool,
    stage_names,
    suffix_forward,
    val_metrics,
    within_group_rank_loss,
)
from mendicant_desktop.core.errors import ConfigError

from ._tiny import SIZE, fake_index, inputs, tiny_model


def test_kd_loss_hand_case_and_zero() -> None:
    teacher = torch.tensor([[0.0, math.log(3.0)]])  # p_t = (1/4, 3/4)
    student = torch.zeros(1, 2)  # p_s = (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(kd_loss(student, teacher, 1.0)) == pytest.approx(expected, rel=1e-6)
    # = cross-entropy(p_t, p_s) - entropy(p_t)
    ce = -(0.25 * math.log(0.5) + 0.75 * math.log(0.5))
    ent = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(kd_loss(student, teacher, 1.0)) == pytest.approx(ce - ent, rel=1e-6)
    logits = torch.randn(5, 7)
    assert float(kd_loss(logits, logits.clone(), 2.0)) == pytest.approx(0.0, abs=1e-6)
    # T^2 scaling: at T=2 the soft targets are (1/sqrt(3)+...) -> compare against the formula directly
    t = 2.0
    pt = torch.softmax(teacher / t, 1)
    ps = torch.softmax(student / t, 1)
    assert float(kd_loss(student, teacher, t)) == pytest.approx(
        float(t * t * (pt * (pt / ps).log()).sum()), rel=1e-6
    )


def test_distillation_loss_parts() -> None:
    tc = load_config(overrides={"train.label_smoothing": 0.0, "train.kd_weight": 0.5}).train
    logits = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 3.0, 0]])
    labels = torch.tensor([0, 5])
    mal = torch.tensor([1, 0])
    loss, parts = distillation_loss(logits, logits.clone(), labels, mal, tc)
    ce = float(torch.nn.functional.cross_entropy(logits, labels))
    assert parts["ce"] == pytest.approx(ce)
    assert parts["kd"] == pytest.approx(0.0, abs=1e-6)
    assert float(loss) == pytest.approx(tc.ce_weight * ce + tc.malignant_weight * parts["bce"], rel=1e-5)
    _, no_teacher = distillation_loss(logits, None, labels, mal, tc)
    assert "kd" not in no_teacher


def test_kd_only_on_rows_with_soft_targets() -> None:
    tc = load_config(overrides={"train.kd_weight": 1.0}).train
    logits = torch.randn(4, 7)
    teacher = torch.randn(4, 7)
    labels = torch.tensor([0, 1, 2, 3])
    mal = torch.tensor([1, 1, 0, 0])
    masked = teacher.clone()
    masked[2:] = float("nan")  # e.g. PAD rows when train.kd_datasets = ["isic"]
    _, parts = distillation_loss(logits, masked, labels, mal, tc)
    assert parts["kd"] == pytest.approx(
        float(kd_loss(logits[:2], teacher[:2], tc.temperature)) * 0.5, rel=1e-5
    )
    _, none = distillation_loss(logits, torch.full((4, 7), float("nan")), labels, mal, tc)
    assert "kd" not in none and math.isfinite(none["loss"])


def test_fallback_epoch_puts_fairness_before_score() -> None:
    def h(e, score, gap):
        return {"epoch": e, "val": {"score": score, "pad_fst_gap": gap}}

    hist = [h(0, 0.5, 0.01), h(1, 0.70, 0.07), h(2, 0.74, 0.17), h(3, 0.75, 0.21)]
    assert fallback_epoch(hist, 0.15)["epoch"] == 1  # the higher scores come with a gap above the cap
    assert fallback_epoch(hist, 0.20)["epoch"] == 2
    assert fallback_epoch(hist[:1] + hist[2:], 0.15)["epoch"] == 2  # none within: the smallest gap
    assert fallback_epoch([h(1, 0.6, float("nan")), h(2, 0.7, 0.3)], 0.15)["epoch"] == 1
    assert fallback_epoch(hist[:1], 0.15)["epoch"] == 0  # nothing trained


def test_ce_mask_drops_only_the_masked_rows_cross_entropy() -> None:
    """PAD's ACK is benign but its dx7 label (akiec) counts toward malignancy: such rows train the BCE only."""
    tc = load_config(overrides={"train.label_smoothing": 0.0, "train.kd_weight": 0.0}).train
    logits = torch.randn(4, 7)
    labels = torch.tensor([0, 1, 0, 5])
    mal = torch.tensor([0, 1, 1, 0])
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0])
    _, parts = distillation_loss(logits, None, labels, mal, tc, mask)
    assert parts["ce"] == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[1:], labels[1:])), rel=1e-6
    )
    _, full = distillation_loss(logits, None, labels, mal, tc)
    assert parts["bce"] == pytest.approx(full["bce"])  # the malignancy term still sees every row
    with pytest.raises(ConfigError, match="train.ce_skip_dx"):
        load_config(overrides={"train.ce_skip_dx": ["ACKK"]})


def test_rank_loss_only_counts_pairs_within_a_group() -> None:
    mal = torch.tensor([1, 0, 1, 0])
    group = torch.tensor([0, 0, 1, 1])
    z = lambda p: math.log(p / (1 - p))  # noqa: E731
    score = torch.tensor([0.9, 0.2, 0.6, 0.5])
    want = (math.log1p(math.exp(-(z(0.9) - z(0.2)))) + math.log1p(math.exp(-(z(0.6) - z(0.5))))) / 2
    assert float(within_group_rank_loss(score, mal, group)) == pytest.approx(want, rel=1e-5)
    # Group 1 scored far below group 0 (a cross-group "misranking" of 0.6/0.5 vs 0.9/0.2): the loss does not
    # move as long as each group's own order and logit differences are the same.
    shifted = torch.tensor([0.9, 0.2, 1 / (1 + math.exp(-(z(0.6) - 6))), 1 / (1 + math.exp(-(z(0.5) - 6)))])
    assert float(within_group_rank_loss(shifted, mal, group)) == pytest.approx(want, rel=1e-4)
    # Reversing a group's order raises the loss; a perfect wide margin drives it towards 0.
    worse = torch.tensor([0.2, 0.9, 0.6, 0.5])
    assert float(within_group_rank_loss(worse, mal, group)) > want
    best = torch.tensor([1 - 1e-5, 1e-5, 1 - 1e-5, 1e-5])
    assert float(within_group_rank_loss(best, mal, group)) < 1e-3
    # No malignant/benign pair inside any group -> no term.
    assert within_group_rank_loss(score, mal, torch.tensor([0, 1, 2, 3])) is None
    # Gradients push each group's malignant score up and its benign one down.
    s = score.clone().requires_grad_(True)
    within_group_rank_loss(s, mal, group).backward()
    assert (s.grad[[0, 2]] < 0).all() and (s.grad[[1, 3]] > 0).all()


def test_rank_pool_keeps_labelled_pad_groups_with_both_classes(tmp_path) -> None:
    index = fake_index(tmp_path, n_train=24, n_val=12)
    train = index.indices("train")
    rows, keys = rank_pool(index, train)
    recs = [index.records[train[k]] for k in rows]
    assert len(rows) > 0 and all(r.dataset == "pad" and r.fst_source == "label" for r in recs)
    assert keys == [(r.fst, r.malignant) for r in recs]
    for g in {k[0] for k in keys}:
        assert {m for f, m in keys if f == g} == {0, 1}


def test_trainer_with_rank_loss_trains_and_logs_it(tmp_path) -> None:
    cfg = load_config(overrides={
        "train.epochs": 1, "train.batch_size": 8, "train.freeze_through": "middle.0", "train.train_views": 1,
        "fairness.min_group_n": 2, "train.rank_weight": 1.0, "train.rank_batch": 6,
    })  # fmt: skip
    index = fake_index(tmp_path, n_train=24, n_val=12)
    tr = PruningTrainer(cfg, tmp_path, index, tiny_model(seed=2), None, log=lambda s: None)
    out = tr.fit()
    parts = out["history"][1]["train"]
    assert parts["rank"] > 0 and parts["batches"] == 3
    with pytest.raises(ConfigError, match="train.rank_weight"):
        load_config(overrides={"train.rank_weight": -1.0})


@pytest.mark.parametrize("through", ["none", "stem", "entry.2", "middle.1", "block13"])
def test_prefix_suffix_equal_full_forward(through: str) -> None:
    model = tiny_model()
    x, meta, _ = inputs(2)
    with torch.no_grad():
        feat = prefix_forward(model, x, through)
        logits, fmap = suffix_forward(model, feat, meta, through)
        full_logits, full_fmap = model.logits_and_features(x, meta)
    torch.testing.assert_close(logits, full_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fmap, full_fmap, rtol=1e-4, atol=1e-5)


def test_bad_freeze_stage() -> None:
    with pytest.raises(ValueError, match="not a stage"):
        prefix_forward(tiny_model(), inputs(1)[0], "middle.9")
    assert stage_names(tiny_model())[-1] == "block14"


def test_augmentation() -> None:
    img = torch.rand(SIZE, SIZE, 3) * 255
    a = augment_image(img, torch.Generator().manual_seed(1), 0.08)
    b = augment_image(img, torch.Generator().manual_seed(1), 0.08)
    assert torch.equal(a, b) and a.shape == img.shape
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    plain = augment_image(img, torch.Generator().manual_seed(3), 0.0)
    # without jitter the view is a pure dihedral transform: same multiset of pixels
    assert torch.allclose(plain.sum(), img.sum(), rtol=1e-5)
    f = torch.randn(4, 5, 5)
    assert torch.equal(dihedral(dihedral(f, 1, False, (1, 2)), 3, False, (1, 2)), f)


def test_val_metrics_by_hand(tmp_path) -> None:
    cfg = load_config(overrides={"fairness.min_group_n": 2})
    index = fake_index(tmp_path, n_train=4, n_val=12)
    pos = index.indices("val")
    probs = np.full((len(pos), 7), 1 / 7, np.float32)
    recs = [index.records[i] for i in pos]
    for k, r in enumerate(recs):  # perfect ranking: malignant rows get a high p(mel)
        probs[k] = 0.01
        probs[k, 4] = 0.9 if r.malignant else 0.05
        probs[k, 5] = 1 - probs[k].sum() + probs[k, 5]
    m = val_metrics(probs, index, pos, cfg)
    assert m["pad_auroc"] == pytest.approx(1.0)
    assert m["isic_external_auroc"] == pytest.approx(1.0)
    assert m["n"] == 12


def test_trainer_runs_checkpoints_and_resumes(tmp_path) -> None:
    cfg = load_config(overrides={
        "train.epochs": 2, "train.batch_size": 8, "train.freeze_through": "middle.0", "train.train_views": 2,
        "fairness.min_group_n": 2, "train.early_stop.min_epochs": 5, "train.teacher_on_val": True,
    })  # fmt: skip
    index = fake_index(tmp_path, n_train=24, n_val=12)
    teacher = tiny_model(seed=1)
    student = tiny_model(seed=2)
    save_student(student, tmp_path / "prune" / "pruned.pt")
    logs: list[str] = []
    tr = PruningTrainer(cfg, tmp_path, index, student, teacher, log=logs.append)
    out = tr.fit()
    assert out["epochs_run"] == 2
    assert (tmp_path / "train" / "student.pt").is_file()
    assert (tmp_path / "train" / "checkpoints" / "last.pt").is_file()
    assert (tmp_path / "train" / "checkpoints" / "epoch_002.pt").is_file()
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert metrics["teacher_val"] is not None and len(metrics["history"]) == 3
    feats = np.load(tmp_path / "train" / "cache" / "prefix_train.npy", mmap_mode="r")
    assert feats.shape[:2] == (24, 2)
    tlog = np.load(tmp_path / "train" / "cache" / "teacher_train.npy")
    is_pad = np.array([index.records[i].dataset == "pad" for i in index.indices("train")])
    assert np.isnan(tlog[is_pad]).all() and np.isfinite(tlog[~is_pad]).all()  # kd_datasets = ["isic"]
    from compression.prune import load_student
    from compression.train import student_from_checkpoint

    best = load_student(tmp_path / "train" / "student.pt")
    again = student_from_checkpoint(tmp_path, metrics["best_epoch"])
    x, meta, _ = inputs(2)
    torch.testing.assert_close(best(x, meta)[0], again(x, meta)[0])
    # frozen prefix untouched, suffix trained
    s0 = tiny_model(seed=2)
    torch.testing.assert_close(student.backbone.conv1.conv.weight, s0.backbone.conv1.conv.weight)
    assert not torch.equal(student.head.out.weight, s0.head.out.weight)
    # resume: a new trainer with more epochs continues from epoch 2
    cfg3 = load_config(overrides={
        "train.epochs": 3, "train.batch_size": 8, "train.freeze_through": "middle.0", "train.train_views": 2,
        "fairness.min_group_n": 2, "train.early_stop.min_epochs": 5,
    })  # fmt: skip
    logs.clear()
    tr3 = PruningTrainer(cfg3, tmp_path, index, tiny_model(seed=2), teacher, log=logs.append)
    out3 = tr3.fit(resume=True)
    assert any("resumed" in line for line in logs)
    assert out3["epochs_run"] == 3 and [h["epoch"] for h in out3["history"]] == [0, 1, 2, 3]


def test_trainer_deadline_stops_gracefully(tmp_path) -> None:
    import time

    cfg = load_config(overrides={"train.epochs": 5, "train.batch_size": 8, "train.freeze_through": "block13",
                                 "train.train_views": 1})  # fmt: skip
    index = fake_index(tmp_path, n_train=16, n_val=8)
    tr = PruningTrainer(cfg, tmp_path, index, tiny_model(seed=2), None, log=lambda s: None,
                        deadline=time.time() - 1)  # fmt: skip
    out = tr.fit()
    assert out["stop_reason"] == "time budget" and out["epochs_run"] == 0
    assert (tmp_path / "train" / "student.pt").is_file()


def test_training_is_reproducible_across_process_history_and_resume(tmp_path, monkeypatch) -> None:
    """The same config and pruned model give the same weights whether or not something drew from torch's RNG
    first (``build`` runs prune in the same process) and whether or not the run was stopped and resumed."""
    cfg = load_config(overrides={
        "train.epochs": 2, "train.batch_size": 8, "train.freeze_through": "middle.0", "train.train_views": 1,
        "fairness.min_group_n": 2, "train.early_stop.min_epochs": 5,
    })  # fmt: skip

    def weights_after_epoch_2(run) -> dict[str, torch.Tensor]:
        return torch.load(run / "train" / "checkpoints" / "epoch_002.pt", weights_only=False)["model"]

    runs = {k: tmp_path / k for k in ("fresh", "drawn", "resumed")}
    torch.manual_seed(0)
    PruningTrainer(cfg, runs["fresh"], fake_index(runs["fresh"]), tiny_model(seed=2), None, log=lambda s: None).fit()
    torch.rand(12345)  # what an earlier stage might have drawn
    PruningTrainer(cfg, runs["drawn"], fake_index(runs["drawn"]), tiny_model(seed=2), None, log=lambda s: None).fit()
    with monkeypatch.context() as m:  # stop after epoch 1 (checkpoint written), then resume in a new trainer
        m.setattr(PruningTrainer, "_stop_reason", lambda self: "stopped for the test")
        PruningTrainer(cfg, runs["resumed"], fake_index(runs["resumed"]), tiny_model(seed=2), None,
                       log=lambda s: None).fit()  # fmt: skip
    assert not (runs["resumed"] / "train" / "checkpoints" / "epoch_002.pt").exists()
    torch.rand(777)
    out = PruningTrainer(cfg, runs["resumed"], fake_index(runs["resumed"]), tiny_model(seed=2), None,
                         log=lambda s: None).fit(resume=True)  # fmt: skip
    assert out["epochs_run"] == 2
    ref = weights_after_epoch_2(runs["fresh"])
    for k in ("drawn", "resumed"):
        got = weights_after_epoch_2(runs[k])
        for name, t in ref.items():
            torch.testing.assert_close(got[name], t, rtol=0, atol=0, msg=f"{k}: {name}")
