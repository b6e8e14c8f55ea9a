"""FairPrune (structured): score channels, then physically remove them with Torch-Pruning's DepGraph.

Coupling
--------
Torch-Pruning's :class:`torch_pruning.DependencyGraph` traces the network and groups every channel that
must go together: the residual adds of the entry/middle/exit blocks (block out = sepconv2 out = 1x1
shortcut out = every middle block's sepconv3 out = the trunk), the depthwise convs of the separable convs
(out = in = groups), the BatchNorms, and the next layers' input channels. It handles this network as is;
no hand-written graph surgery is needed. A group with an ignored module among its *output*-pruned layers
is left whole.

Decisions
---------
- ``prune.keep_feature_channels = true`` keeps block14's output (C = 2048): the Grad-CAM feature map, the
  ``features`` ONNX output and ``img_fc_w`` (C, 264) of ``head.npz`` keep the reference's shapes, and the
  head needs no input surgery. block14's *inner* width (sepconv1 out) is pruned, which takes most of the
  block's MACs anyway. (Torch-Pruning 1.6 forms no prunable group for block14's output in any case: the
  global mean feeding ``img_fc`` is not traced as a channel coupling, so ``false`` changes nothing today.)
  Only block14's output *producers* (``sepconv2.sep.pointwise`` and ``sepconv2.bn``) are ignored: its
  depthwise conv is coupled to the inner width, and ignoring it would freeze that group too.
- The head's Linear layers are never pruned (their out widths are the ``head.npz`` contract).
- ``prune.ignore`` lists module prefixes left whole (by default the stem and the first two entry blocks:
  cheap, and they carry the low-level colour features skin-tone fairness depends on).

Importance (per channel of a coupled group; :class:`FairPruneImportance`)
-------------------------------------------------------------------------
``score = alpha * M / mean(M) + beta * T / mean(T) - gamma * P / mean((T_priv + T_unpriv) / 2)``

- ``M`` magnitude: L2 norm of the channel's filters over every non-depthwise conv (or Linear) whose *output*
  channel it is (for a residual group, all coupled producers).
- ``T`` first-order Taylor: per batch ``|sum over the group's BatchNorms of (gamma * dL/dgamma + beta *
  dL/dbeta)|`` - exactly the first-order change of the loss when the channel's (post-BN) output is removed -
  averaged over batches. Without a BatchNorm the conv's ``|sum(w * dL/dw)|`` is used. Loss: cross-entropy on
  dx7, model in eval mode (BatchNorm statistics fixed).
- ``P`` FairPrune term (Wu et al. 2022): the same Taylor saliency measured on batches of the *privileged*
  FST groups (``T_priv``) and of the *unprivileged* groups (``T_unpriv``), ``P = T_priv - T_unpriv``.
  Removing a channel raises the unprivileged loss by about ``T_unpriv`` and the privileged loss by about
  ``T_priv``, so it widens the privileged/unprivileged gap by about ``T_unpriv - T_priv = -P``. Subtracting
  ``gamma * P`` therefore *adds* ``gamma`` x the gap widening to the score: a channel that matters more to
  the unprivileged group than to the privileged one is protected (kept), and a channel serving mainly the
  privileged group is pruned first - FairPrune's "prune what is salient for the privileged group but not
  for the unprivileged one". (Read literally, "penalty = gap widening" with a minus sign would prune the
  channels the unprivileged group needs; the sign is defined so the documented behaviour holds, and
  ``tests/compression/test_prune.py`` checks it.)

Iteration
---------
``prune.steps`` steps; step k removes the globally lowest-scoring channels until the exact post-pruning
MAC count (computed analytically from layer shapes and spatial sizes) reaches the k-th point of a linear
schedule towards ``target_ratio`` x the teacher's MACs (or, with ``target = "channels"``, removes that share
of the prunable channels). No group loses more than ``max_group_ratio`` of its original channels nor
drops below ``min_channels``. BatchNorm statistics are re-estimated after every step.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

from .config import Config, FairnessConfig, PruneConfig
from .reference import HeadDims, ReferenceNet, XceptionWidths, load_reference

__all__ = [
    "SUBSETS",
    "FairPruneImportance",
    "FairPruner",
    "PruneResult",
    "combine_scores",
    "layer_spatial_sizes",
    "count_macs",
    "count_params",
    "widths_of",
    "save_student",
    "load_student",
    "build_teacher",
    "ignored_modules",
    "recalibrate_bn",
    "run_prune",
    "prune_done",
]

SUBSETS = ("any", "privileged", "unprivileged")
EPS = 1e-12
STUDENT_FORMAT = "mendicant-student-v1"


# --------------------------------------------------------------------------------------------------
# Models: teacher, saving/loading a pruned student
# --------------------------------------------------------------------------------------------------


def build_teacher(cfg: Config) -> ReferenceNet:
    """The FP32 teacher: the reference weights, or (``model.teacher = "tiny"``) a seeded tiny random one."""
    if cfg.model.teacher == "reference":
        return load_reference().eval()
    widths = XceptionWidths().scaled(cfg.model.tiny_width_mult, n_middle=cfg.model.tiny_n_middle, minimum=16)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.run.seed)
        model = ReferenceNet(widths)
    g = torch.Generator().manual_seed(cfg.run.seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.1, 0.1, generator=g)
        model.normalization.mean.fill_(127.5)
        model.normalization.variance.fill_(127.5**2)
    return model.eval()


def widths_of(model: ReferenceNet) -> XceptionWidths:
    """The :class:`XceptionWidths` of a (pruned) model; every pruned Xception still fits the class."""
    b = model.backbone

    def out(m: nn.Module) -> int:
        return int(m.sep.pointwise.out_channels)

    widths = XceptionWidths(
        stem=(b.conv1.conv.out_channels, b.conv2.conv.out_channels),
        entry=tuple((out(e.sepconv1), out(e.sepconv2)) for e in b.entry),
        middle=tuple((out(m.sepconv1), out(m.sepconv2)) for m in b.middle),
        block13=(out(b.block13.sepconv1), out(b.block13.sepconv2)),
        block14=(out(b.block14.sepconv1), out(b.block14.sepconv2)),
    )
    for m in b.middle:
        if out(m.sepconv3) != widths.trunk:  # pragma: no cover - DepGraph keeps the residual coupled
            raise ValueError("middle block output width differs from the trunk width")
    return widths


def save_student(model: ReferenceNet, path: str | Path, **extra: Any) -> Path:
    """Save as ``{format, widths, head_dims, state_dict, ...}``; :func:`load_student` rebuilds a ReferenceNet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": STUDENT_FORMAT,
        "widths": dataclasses.asdict(widths_of(model)),
        "head_dims": dataclasses.asdict(model.head.dims),
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        **extra,
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_student(path: str | Path) -> ReferenceNet:
    """A saved (pruned / fine-tuned) student as a plain :class:`ReferenceNet` in eval mode."""
    payload = torch.load(path, map_location="cpu", weights_only=False)
    if payload.get("format") != STUDENT_FORMAT:
        raise ValueError(f"{path} is not a {STUDENT_FORMAT} file")
    w = payload["widths"]
    widths = XceptionWidths(
        stem=tuple(w["stem"]), entry=tuple(tuple(p) for p in w["entry"]),
        middle=tuple(tuple(p) for p in w["middle"]), block13=tuple(w["block13"]), block14=tuple(w["block14"]),
    )  # fmt: skip
    model = ReferenceNet(widths, HeadDims(**payload["head_dims"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


# --------------------------------------------------------------------------------------------------
# MACs and parameters
# --------------------------------------------------------------------------------------------------


def _example(model: ReferenceNet, input_size: int, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((n, input_size, input_size, 3), 127.0), torch.zeros(n, model.head.dims.meta_dim)


def layer_spatial_sizes(
    model: nn.Module, example: tuple[torch.Tensor, ...]
) -> dict[nn.Module, tuple[int, int]]:
    """Output (H, W) of every Conv2d for one forward of ``example`` ((1, 1) for Linear)."""
    sizes: dict[nn.Module, tuple[int, int]] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(
                m.register_forward_hook(lambda mod, i, o: sizes.__setitem__(mod, tuple(o.shape[-2:])))
            )
        elif isinstance(m, nn.Linear):
            sizes[m] = (1, 1)
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _layer_macs(m: nn.Module, hw: tuple[int, int], cin: int | None = None, cout: int | None = None) -> int:
    if isinstance(m, nn.Conv2d):
        cin = m.in_channels if cin is None else cin
        cout = m.out_channels if cout is None else cout
        kh, kw = m.kernel_size
        per_out = kh * kw * (1 if m.groups == m.in_channels and m.groups > 1 else cin // m.groups)
        return int(hw[0] * hw[1] * per_out * cout)
    if isinstance(m, nn.Linear):
        cin = m.in_features if cin is None else cin
        cout = m.out_features if cout is None else cout
        return int(cin * cout)
    return 0


def count_macs(model: nn.Module, example: tuple[torch.Tensor, ...] | None = None, *, input_size: int = 254,
               sizes: dict[nn.Module, tuple[int, int]] | None = None) -> int:  # fmt: skip
    """Multiply-accumulates of the convolutions and Linear layers for one image (BN/ReLU/pool excluded)."""
    if sizes is None:
        sizes = layer_spatial_sizes(model, example or _example(model, input_size))  # type: ignore[arg-type]
    return sum(_layer_macs(m, sizes[m]) for m in model.modules() if m in sizes)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------
# Importance
# --------------------------------------------------------------------------------------------------


def combine_scores(magnitude: torch.Tensor, taylor: torch.Tensor, taylor_priv: torch.Tensor | None,
                   taylor_unpriv: torch.Tensor | None, alpha: float, beta: float, gamma: float) -> torch.Tensor:  # fmt: skip
    """``alpha*M/mean(M) + beta*T/mean(T) - gamma*P/mean((Tp+Tu)/2)`` with ``P = T_priv - T_unpriv``.

    Each term is normalised by its mean over the group's channels, so scores of different layers are
    comparable for the global ranking. A higher score means "keep".
    """
    m = magnitude.double()
    t = taylor.double()
    score = alpha * m / (m.mean() + EPS) + beta * t / (t.mean() + EPS)
    if gamma and taylor_priv is not None and taylor_unpriv is not None:
        tp_, tu = taylor_priv.double(), taylor_unpriv.double()
        penalty = tp_ - tu
        score = score - gamma * penalty / (((tp_ + tu) / 2).mean() + EPS)
    return score


class FairPruneImportance:
    """Per-channel importance of a DepGraph group (``imp(group) -> 1-D tensor``, higher = keep).

    Call :meth:`accumulate` after each ``loss.backward()`` with the batch's subset (``"any"``,
    ``"privileged"`` or ``"unprivileged"``); :meth:`components` gives the raw M, T, T_priv, T_unpriv.
    """

    def __init__(self, alpha: float = 1.0, beta: float = 1.0, gamma: float = 0.5) -> None:
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.reset()

    def reset(self) -> None:
        # module -> subset -> list of per-batch per-channel contributions sum(theta * grad)
        self._contrib: dict[nn.Module, dict[str, list[torch.Tensor]]] = defaultdict(lambda: defaultdict(list))

    @torch.no_grad()
    def accumulate(self, model: nn.Module, subset: str = "any") -> None:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
                if m.weight.grad is None:
                    continue
                v = m.weight * m.weight.grad + m.bias * m.bias.grad
                self._contrib[m][subset].append(v.detach().double().clone())
            elif isinstance(m, nn.Conv2d) and m.weight.grad is not None:
                v = (m.weight * m.weight.grad).sum(dim=(1, 2, 3))
                if m.bias is not None and m.bias.grad is not None:
                    v = v + m.bias * m.bias.grad
                self._contrib[m][subset].append(v.detach().double().clone())

    def _taylor(self, group: Any, subsets: Sequence[str]) -> torch.Tensor | None:
        """Mean over batches of |sum over the group's output BNs (else convs) of theta*grad|."""
        bns, convs = [], []
        for dep, idxs in group:
            m = dep.target.module
            if not _is_out(dep):
                continue
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m in self._contrib:
                bns.append((m, idxs))
            elif isinstance(m, nn.Conv2d) and m in self._contrib:
                convs.append((m, idxs))
        members = bns or convs
        if not members:
            return None
        n_batches = [len(self._contrib[members[0][0]][s]) for s in subsets]
        total = sum(n_batches)
        if total == 0:
            return None
        acc = None
        for s, nb in zip(subsets, n_batches, strict=True):
            for b in range(nb):
                v = sum(self._contrib[m][s][b][list(idxs)] for m, idxs in members)
                acc = v.abs() if acc is None else acc + v.abs()
        return acc / total

    @torch.no_grad()
    def components(self, group: Any) -> dict[str, torch.Tensor | None]:
        sq = None
        for dep, idxs in group:
            m = dep.target.module
            if not _is_out(dep):
                continue
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not _is_depthwise(m):
                w = m.weight.detach().double()[list(idxs)].flatten(1)
                s = (w**2).sum(1)
                sq = s if sq is None else sq + s
        n = len(group[0][1])
        magnitude = torch.sqrt(sq) if sq is not None else torch.ones(n, dtype=torch.float64)
        taylor = self._taylor(group, SUBSETS)
        return {
            "magnitude": magnitude,
            "taylor": taylor if taylor is not None else torch.zeros(n, dtype=torch.float64),
            "taylor_priv": self._taylor(group, ("privileged",)),
            "taylor_unpriv": self._taylor(group, ("unprivileged",)),
        }

    def __call__(self, group: Any) -> torch.Tensor:
        c = self.components(group)
        return combine_scores(c["magnitude"], c["taylor"], c["taylor_priv"], c["taylor_unpriv"],
                              self.alpha, self.beta, self.gamma)  # fmt: skip


def _is_out(dep: Any) -> bool:
    """Whether a dependency prunes its module's *output* channels (Torch-Pruning's handler name)."""
    return getattr(dep.handler, "__name__", "") == "prune_out_channels"


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels


# --------------------------------------------------------------------------------------------------
# BatchNorm recalibration
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Re-estimate every BatchNorm's running statistics (cumulative average) over ``batches``."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    was_training = model.training
    saved = [(m, m.momentum) for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    n = 0
    try:
        for images, meta in batches:
            model(images, meta)
            n += len(images)
    finally:
        for m, mom in saved:
            m.momentum = mom
        model.train(was_training)
        if not was_training:
            model.eval()
    return n


# --------------------------------------------------------------------------------------------------
# Pruner
# --------------------------------------------------------------------------------------------------


def ignored_modules(model: ReferenceNet, cfg: PruneConfig) -> list[nn.Module]:
    """Modules whose output channels must stay (config prefixes, the head, block14 out if kept)."""
    names = list(cfg.ignore) + ["head"]
    if cfg.keep_feature_channels:
        # only the *producers* of block14's output; its depthwise belongs to the (prunable) inner group
        names += ["backbone.block14.sepconv2.sep.pointwise", "backbone.block14.sepconv2.bn"]
    out: list[nn.Module] = []
    for name, m in model.named_modules():
        if any(name == p or name.startswith(p + ".") for p in names):
            out.append(m)
    return out


@dataclass
class PruneResult:
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    steps: list[dict[str, Any]]
    layers: dict[str, dict[str, Any]]
    widths: dict[str, Any]

    @property
    def mac_ratio(self) -> float:
        return self.macs_after / self.macs_before

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mac_ratio"] = self.mac_ratio
        d["param_ratio"] = self.params_after / self.params_before
        return d


class FairPruner:
    """Iterative, coupling-aware structured pruning of a :class:`ReferenceNet` (modified in place)."""

    def __init__(self, model: ReferenceNet, cfg: PruneConfig, *, input_size: int = 254,
                 importance: FairPruneImportance | None = None) -> None:  # fmt: skip
        self.model = model.eval()
        self.cfg = cfg
        self.input_size = input_size
        self.example = _example(model, input_size)
        self.importance = importance or FairPruneImportance(cfg.alpha, cfg.beta, cfg.gamma)
        self.DG = tp.DependencyGraph().build_dependency(
            model, example_inputs=self.example, forward_fn=lambda m, x: m(*x),
            output_transform=lambda out: out[0].sum() + out[1].sum(),
        )  # fmt: skip
        self.ignored = ignored_modules(model, cfg)
        self.sizes = layer_spatial_sizes(model, self.example)
        self.names = {m: n for n, m in model.named_modules()}
        self.original_shapes = {self.names[m]: _shape(m) for m in self.sizes}
        self.macs0 = count_macs(model, sizes=self.sizes)
        self.params0 = count_params(model)
        self.original_group_size: dict[str, int] = {}
        for g in self.groups():
            self.original_group_size[self._gkey(g)] = len(g[0][1])
        self.steps: list[dict[str, Any]] = []

    # -- groups ------------------------------------------------------------------------------------
    def groups(self) -> list[Any]:
        return list(
            self.DG.get_all_groups(ignored_layers=self.ignored, root_module_types=[nn.Conv2d, nn.Linear])
        )

    def _gkey(self, group: Any) -> str:
        return self.names[group[0][0].target.module]

    def prunable_channels(self) -> int:
        return sum(self.original_group_size.values())

    # -- importance --------------------------------------------------------------------------------
    def estimate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor, str]],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> int:  # fmt: skip
        """Accumulate Taylor statistics over ``(images, meta, labels, subset)`` batches (eval mode)."""
        loss_fn = loss_fn or (lambda logits, y: F.cross_entropy(logits, y))
        self.importance.reset()
        self.model.eval()
        n = 0
        for images, meta, labels, subset in batches:
            self.model.zero_grad(set_to_none=True)
            logits = self.model.logits(images, meta)
            loss_fn(logits, labels).backward()
            self.importance.accumulate(self.model, subset)
            n += 1
        self.model.zero_grad(set_to_none=True)
        return n

    # -- selection ---------------------------------------------------------------------------------
    def _limits(self, group: Any) -> int:
        """Most channels that may still be removed from ``group``."""
        n_now = len(group[0][1])
        n0 = self.original_group_size.get(self._gkey(group), n_now)
        keep_min = max(self.cfg.min_channels, int(np.ceil(n0 * (1 - self.cfg.max_group_ratio))))
        return max(0, n_now - keep_min)

    def select(self, target_macs: int | None = None, target_removed: int | None = None
               ) -> list[tuple[Any, list[int]]]:  # fmt: skip
        """Channels to remove (lowest score first) until the exact MAC count <= ``target_macs``
        (or ``target_removed`` channels in total have gone)."""
        groups = self.groups()
        cand: list[tuple[float, int, int]] = []
        for gi, g in enumerate(groups):
            scores = self.importance(g)
            for c, s in enumerate(scores.tolist()):
                cand.append((float(s), gi, c))
        cand.sort()
        state = {m: list(_shape(m)) for m in self.sizes}
        macs = {m: _layer_macs(m, self.sizes[m]) for m in self.sizes}
        total = sum(macs.values())
        removed_total = self.prunable_channels() - sum(len(g[0][1]) for g in groups)
        limits = [self._limits(g) for g in groups]
        chosen: dict[int, list[int]] = defaultdict(list)
        group_mods = [[(dep.target.module, _is_out(dep)) for dep, _ in g if dep.target.module in self.sizes]
                      for g in groups]  # fmt: skip
        for _score, gi, c in cand:
            if target_macs is not None and total <= target_macs:
                break
            if target_removed is not None and removed_total >= target_removed:
                break
            if len(chosen[gi]) >= limits[gi]:
                continue
            chosen[gi].append(c)
            removed_total += 1
            seen = set()
            for m, is_out in group_mods[gi]:
                if m in seen:
                    continue
                seen.add(m)
                cin, cout = state[m]
                if _is_depthwise(m):
                    state[m] = [cin - 1, cout - 1]
                elif is_out:
                    state[m] = [cin, cout - 1]
                else:
                    state[m] = [cin - 1, cout]
                new = _layer_macs_dw(m, self.sizes[m], *state[m])
                total += new - macs[m]
                macs[m] = new
        return [(groups[gi], sorted(groups[gi][0][1][c] for c in cs)) for gi, cs in chosen.items() if cs]

    def prune_step(self, target_macs: int | None = None, target_removed: int | None = None) -> dict[str, Any]:
        t0 = time.time()
        plan = self.select(target_macs, target_removed)
        n_removed = 0
        for group, idxs in plan:
            group.prune(idxs)
            n_removed += len(idxs)
        macs = count_macs(self.model, sizes=self.sizes)
        info = {
            "step": len(self.steps) + 1,
            "target_macs": target_macs,
            "target_removed": target_removed,
            "removed_channels": n_removed,
            "groups_touched": len(plan),
            "macs": macs,
            "mac_ratio": macs / self.macs0,
            "params": count_params(self.model),
            "seconds": round(time.time() - t0, 2),
        }
        self.steps.append(info)
        return info

    def schedule(self) -> list[tuple[int | None, int | None]]:
        """(target_macs, target_removed) per step: linear from the teacher to the final target."""
        n = self.cfg.steps
        out = []
        for k in range(1, n + 1):
            frac = k / n
            if self.cfg.target == "macs":
                out.append((int(round(self.macs0 * (1 - frac * (1 - self.cfg.target_ratio)))), None))
            else:
                out.append((None, int(round(self.prunable_channels() * self.cfg.target_ratio * frac))))
        return out

    def result(self) -> PruneResult:
        layers = {}
        for m in self.sizes:
            name = self.names[m]
            cin0, cout0 = self.original_shapes[name]
            cin, cout = _shape(m)
            layers[name] = {
                "in": [cin0, cin], "out": [cout0, cout],
                "out_sparsity": round(1 - cout / cout0, 4), "in_sparsity": round(1 - cin / cin0, 4),
                "macs": _layer_macs(m, self.sizes[m]),
            }  # fmt: skip
        return PruneResult(
            macs_before=self.macs0, macs_after=count_macs(self.model, sizes=self.sizes),
            params_before=self.params0, params_after=count_params(self.model), steps=self.steps,
            layers=layers, widths=dataclasses.asdict(widths_of(self.model)),
        )  # fmt: skip


def _shape(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Conv2d):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    raise TypeError(type(m))


def _layer_macs_dw(m: nn.Module, hw: tuple[int, int], cin: int, cout: int) -> int:
    if _is_depthwise(m):
        kh, kw = m.kernel_size
        return int(hw[0] * hw[1] * kh * kw * cout)
    return _layer_macs(m, hw, cin, cout)


# --------------------------------------------------------------------------------------------------
# The prune stage
# --------------------------------------------------------------------------------------------------


def prune_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "prune" / "pruned.pt").is_file() and (
        Path(run_dir) / "prune" / "report.json"
    ).is_file()


def _fst_subset_positions(index: Any, positions: np.ndarray, fair: FairnessConfig) -> dict[str, np.ndarray]:
    fst = index.fst
    return {
        "any": positions,
        "privileged": np.array([p for p in positions if fst[p] in fair.privileged], np.int64),
        "unprivileged": np.array([p for p in positions if fst[p] in fair.unprivileged], np.int64),
    }


def _image_batches(
    index: Any, positions: np.ndarray, batch_size: int
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    for i in range(0, len(positions), batch_size):
        sel = np.sort(positions[i : i + batch_size])
        yield torch.from_numpy(np.asarray(index.images[sel], np.float32)), torch.from_numpy(index.meta[sel])


def run_prune(cfg: Config, run_dir: str | Path, index: Any, teacher: ReferenceNet | None = None, *,
              log: Callable[[str], None] = print, input_size: int | None = None) -> PruneResult:  # fmt: skip
    """Prune a copy of the teacher into ``<run>/prune/pruned.pt`` with ``report.json``."""
    run_dir = Path(run_dir)
    out_dir = run_dir / "prune"
    out_dir.mkdir(parents=True, exist_ok=True)
    teacher = teacher if teacher is not None else build_teacher(cfg)
    model = copy.deepcopy(teacher).eval()
    input_size = input_size or int(index.images.shape[1])
    pruner = FairPruner(model, cfg.prune, input_size=input_size)
    log(f"prune: teacher {pruner.macs0 / 1e9:.3f} GMAC, {pruner.params0 / 1e6:.2f} M params, "
        f"{len(pruner.groups())} prunable groups, {pruner.prunable_channels()} channels")  # fmt: skip
    train = index.indices("train")
    subsets = _fst_subset_positions(index, train, cfg.fairness)
    labels = index.labels
    pc = cfg.prune
    for k, (tm, tr) in enumerate(pruner.schedule(), start=1):
        rng = np.random.default_rng([cfg.run.seed, 7, k])
        batches = []
        for s in SUBSETS:
            pos = subsets[s]
            if len(pos) < 2:
                log(f"prune: step {k}: subset {s} has {len(pos)} images; skipped")
                continue
            take = rng.choice(pos, size=min(len(pos), pc.batch_size * pc.batches_per_group), replace=False)
            for b in range(0, len(take), pc.batch_size):
                sel = np.sort(take[b : b + pc.batch_size])
                batches.append((torch.from_numpy(np.asarray(index.images[sel], np.float32)),
                                torch.from_numpy(index.meta[sel]), torch.from_numpy(labels[sel]), s))  # fmt: skip
        t0 = time.time()
        pruner.estimate(batches)
        info = pruner.prune_step(tm, tr)
        n_cal = (
            max(pc.batch_size, pc.bn_recalibration_images // 2)
            if k < pc.steps
            else pc.bn_recalibration_images
        )
        if pc.bn_recalibration_images > 0:
            cal = rng.choice(train, size=min(len(train), n_cal), replace=False)
            recalibrate_bn(model, _image_batches(index, cal, 16))
        info["seconds_total"] = round(time.time() - t0, 1)
        log(f"prune: step {k}/{pc.steps}: removed {info['removed_channels']} channels, "
            f"MACs {info['mac_ratio']:.3f} of teacher, params {info['params'] / 1e6:.2f} M ({info['seconds_total']}s)")  # fmt: skip
    result = pruner.result()
    save_student(model, out_dir / "pruned.pt", prune_report=result.to_dict())
    with open(out_dir / "report.json", "w", encoding="utf-8") as fh:
        json.dump(result.to_dict(), fh, indent=2)
    log(f"prune: done, MACs {result.macs_after / 1e9:.3f} G ({result.mac_ratio:.3f}), params "
        f"{result.params_after / 1e6:.2f} M; widths {result.widths}")  # fmt: skip
    return result
