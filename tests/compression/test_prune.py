"""compression.prune on a tiny random Xception-shaped ReferenceNet: importance, coupling, fairness sign."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.config import load_config
from compression.prune import (
    FairPruneImportance,
    FairPruner,
    combine_scores,
    count_macs,
    count_params,
    load_student,
    recalibrate_bn,
    save_student,
    widths_of,
)
from compression.reference import ReferenceNet

from ._tiny import SIZE, inputs, tiny_model


def _cfg(**over):
    base = {"prune.min_channels": 2, "prune.ignore": ["head"], "prune.steps": 2, "prune.target_ratio": 0.5}
    base.update({f"prune.{k}": v for k, v in over.items()})
    return load_config(overrides=base).prune


def _group_with(pruner: FairPruner, out_module: nn.Module):
    for g in pruner.groups():
        for dep, _ in g:
            if dep.target.module is out_module and dep.handler.__name__ == "prune_out_channels":
                return g
    raise AssertionError("group not found")


def test_count_macs_by_hand() -> None:
    conv = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False))
    x = torch.zeros(1, 3, 8, 8)
    assert count_macs(conv, (x,)) == 6 * 6 * 3 * 3 * 3 * 4 + 6 * 6 * 3 * 3 * 4


def test_magnitude_and_taylor_match_hand_computation() -> None:
    model = tiny_model()
    pruner = FairPruner(model, _cfg(), input_size=SIZE)
    x, meta, y = inputs(4)
    pruner.estimate([(x, meta, y, "any")])
    blk = model.backbone.block14.sepconv1
    comps = pruner.importance.components(_group_with(pruner, blk.sep.pointwise))
    # by hand: the same forward/backward, then read the BN gradients
    model.zero_grad()
    F.cross_entropy(model.logits(x, meta), y).backward()
    bn = blk.bn
    taylor = (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).abs().detach().double()
    magnitude = blk.sep.pointwise.weight.detach().double().flatten(1).norm(dim=1)
    torch.testing.assert_close(comps["taylor"], taylor, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(comps["magnitude"], magnitude)
    # residual group: the magnitude spans every coupled producer of the trunk channel
    entry = model.backbone.entry[-1]
    trunk = pruner.importance.components(_group_with(pruner, entry.shortcut.conv))
    producers = [entry.sepconv2.sep.pointwise, entry.shortcut.conv] + [
        m.sepconv3.sep.pointwise for m in model.backbone.middle
    ]
    hand = torch.sqrt(sum(p.weight.detach().double().flatten(1).pow(2).sum(1) for p in producers))
    torch.testing.assert_close(trunk["magnitude"], hand)
    bns = [entry.sepconv2.bn, entry.shortcut.bn] + [m.sepconv3.bn for m in model.backbone.middle]
    hand_t = sum((b.weight * b.weight.grad + b.bias * b.bias.grad).detach().double() for b in bns).abs()
    torch.testing.assert_close(trunk["taylor"], hand_t, rtol=1e-5, atol=1e-12)


def test_fairness_penalty_sign_pure() -> None:
    one = torch.ones(2)
    t_priv = torch.tensor([0.0, 1.0])  # channel 1 matters only to the privileged group
    t_unpriv = torch.tensor([1.0, 0.0])  # channel 0 matters only to the unprivileged group
    fair = combine_scores(one, one, t_priv, t_unpriv, 1.0, 1.0, 0.5)
    assert fair[0] > fair[1]  # the unprivileged group's channel is protected
    plain = combine_scores(one, one, t_priv, t_unpriv, 1.0, 1.0, 0.0)
    assert plain[0] == plain[1]


def test_fairness_penalty_protects_unprivileged_channel_in_selection() -> None:
    def plan(gamma: float) -> list[int]:
        model = tiny_model()
        pruner = FairPruner(model, _cfg(gamma=gamma, alpha=0.0), input_size=SIZE,
                            importance=FairPruneImportance(alpha=0.0, beta=1.0, gamma=gamma))  # fmt: skip
        bn = model.backbone.block14.sepconv1.bn
        n = bn.num_features
        model.zero_grad()
        for subset, vec in (("privileged", torch.eye(n)[1] * 2.0), ("unprivileged", torch.eye(n)[0] * 2.0)):
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            v = vec + 1.0  # every channel equally useful overall, except the two special ones
            bn.weight.grad = v / bn.weight.detach()
            pruner.importance.accumulate(model, subset)
        group = _group_with(pruner, model.backbone.block14.sepconv1.sep.pointwise)
        scores = pruner.importance(group)
        return scores.tolist()

    s_fair = plan(1.0)
    s_plain = plan(0.0)
    assert s_plain[0] == pytest.approx(s_plain[1])
    assert s_fair[0] > s_fair[1]
    assert min(range(len(s_fair)), key=lambda i: s_fair[i]) == 1  # the privileged-only channel goes first


def test_coupling_safe_pruning_keeps_shapes_and_residuals(tmp_path) -> None:
    model = tiny_model()
    x, meta, y = inputs(4)
    pruner = FairPruner(model, _cfg(), input_size=SIZE)
    p0, m0 = count_params(model), pruner.macs0
    for tm, tr in pruner.schedule():
        pruner.estimate([(x[:2], meta[:2], y[:2], "privileged"), (x[2:], meta[2:], y[2:], "unprivileged"),
                         (x, meta, y, "any")])  # fmt: skip
        pruner.prune_step(tm, tr)
    res = pruner.result()
    assert res.macs_after <= 0.5 * m0 * 1.02
    assert count_params(model) < p0
    probs, feats = model(x, meta)
    assert probs.shape == (4, 7)
    assert feats.shape == (4, 48, 3, 3)  # block14 output (C) kept: Grad-CAM map and img_fc rows unchanged
    assert model.head.img_fc.in_features == 48
    w = widths_of(model)
    b = model.backbone
    assert (
        b.entry[-1].shortcut.conv.out_channels == w.trunk == b.entry[-1].sepconv2.sep.pointwise.out_channels
    )
    for m in b.middle:
        assert m.sepconv1.sep.depthwise.in_channels == w.trunk == m.sepconv3.sep.pointwise.out_channels
    assert b.block13.shortcut.conv.in_channels == w.trunk
    assert any(v["out_sparsity"] > 0 for v in res.layers.values())
    # the pruned model is exactly a ReferenceNet with the derived widths (parameter count as expected)
    assert count_params(ReferenceNet(w)) == count_params(model)
    save_student(model, tmp_path / "s.pt")
    again = load_student(tmp_path / "s.pt")
    torch.testing.assert_close(again(x, meta)[0], model.eval()(x, meta)[0])
    assert dataclasses.asdict(widths_of(again)) == res.widths | {}


def test_channel_target_and_group_limits() -> None:
    model = tiny_model()
    cfg = _cfg(target="channels", target_ratio=0.3, steps=1, max_group_ratio=0.5, min_channels=4)
    pruner = FairPruner(model, cfg, input_size=SIZE)
    total = pruner.prunable_channels()
    x, meta, y = inputs(4)
    pruner.estimate([(x, meta, y, "any")])
    ((tm, tr),) = pruner.schedule()
    pruner.prune_step(tm, tr)
    remaining = sum(len(g[0][1]) for g in pruner.groups())
    assert total - remaining == round(total * 0.3)
    for g in pruner.groups():
        n0 = pruner.original_group_size[pruner._gkey(g)]
        assert len(g[0][1]) >= max(4, n0 // 2)
    model(x, meta)


def test_ignored_prefixes_stay_whole() -> None:
    model = tiny_model()
    cfg = _cfg(ignore=["backbone.conv1", "backbone.conv2", "backbone.entry.0", "head"])
    pruner = FairPruner(model, cfg, input_size=SIZE)
    x, meta, y = inputs(2)
    pruner.estimate([(x, meta, y, "any")])
    for tm, tr in pruner.schedule():
        pruner.prune_step(tm, tr)
    b = model.backbone
    assert (b.conv1.conv.out_channels, b.conv2.conv.out_channels) == (16, 16)
    assert (
        b.entry[0].sepconv1.sep.pointwise.out_channels == 16 and b.entry[0].shortcut.conv.out_channels == 16
    )


def test_bn_recalibration_uses_batch_statistics() -> None:
    model = tiny_model()
    x, meta, _ = inputs(8)
    recalibrate_bn(model, [(x, meta)])
    assert not model.training
    bn = model.backbone.conv1.bn
    with torch.no_grad():
        act = model.backbone.conv1.conv(model.normalization(x.permute(0, 3, 1, 2)))
    torch.testing.assert_close(bn.running_mean, act.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
