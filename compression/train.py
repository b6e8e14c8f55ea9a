"""Fine-tuning the pruned student (PruningTrainer): distillation + labels, on a CPU budget.

Making it feasible on 2 shared cores
------------------------------------
- The network is split at ``train.freeze_through`` (a stage name: ``stem``, ``entry.K``, ``middle.K``,
  ``block13``; ``none`` trains everything). The pruned, BatchNorm-recalibrated stages up to it are frozen;
  their outputs are computed **once** per image and view and cached (float16 memmap under
  ``<run>/train/cache``), together with the FP32 teacher's logits (the soft targets). Training then runs
  only the later blocks and the head (retrained in full, metadata branch included) on the cached maps.
- Views: view 0 is the image as preprocessed by the engine; views 1.. are flipped / rotated by 90 degrees /
  colour-jittered copies (dermoscopy has no canonical orientation). With ``feature_dihedral`` the cached maps
  are also flipped/rotated at train time (a mild regulariser, not an exact input transform).
- A wall-time budget (``train.time_budget_minutes`` and/or ``--deadline``) stops training gracefully after
  an evaluation; every epoch writes a checkpoint and ``--resume`` continues from it.

Loss: ``ce_weight * CE(dx7, label smoothing) + malignant_weight * BCE(p(mel)+p(bcc)+p(akiec), malignant)
+ kd_weight * T^2 * KL(softmax(teacher/T) || softmax(student/T))``. The BCE term makes the app's malignancy
score (the sum the model card and the gate use) itself a training target: PAD's actinic keratoses are dx7
``akiec`` yet benign, so CE alone would push them towards the "malignant" sum.

Per-FST ranking (``train.rank_weight`` > 0): the gate and the card judge PAD per clinician-labelled FST group,
by AUROC *within* the group, and the hard cases there are biopsied benign lesions (mostly actinic keratoses)
against carcinomas of the same skin type. Each step then adds an auxiliary batch of ``train.rank_batch``
FST-labelled PAD training images, balanced over (FST, malignant) cells, and a pairwise logistic loss
``softplus(-(z_pos - z_neg))`` on the malignancy logit over malignant/benign pairs of the *same* FST group only
(a smooth surrogate of each group's AUROC; pairs across groups carry no term, so it cannot trade one group's
ranking for another's). Its metadata is never dropped: these are the consultations the app is for.

Teacher soft targets are cached once (identity view) for the data sets in ``train.kd_datasets`` (default
dermoscopy only: on the PAD clinical crops the teacher is at chance, AUROC 0.57, so its targets there would
only pull the student back); rows without targets add no KD term.

Metadata: with probability ``train.meta_dropout`` a training image's metadata is replaced by the "unknown"
encoding. In PAD-UFES-20 as shipped here, all 490 images without a clinician FST are also non-biopsied,
benign and without sex/age: "metadata missing => benign" is a perfect shortcut there, which the dropout
breaks (unknown metadata then also occurs with malignant lesions). For the same reason the selection score
uses the PAD AUROC on the FST-labelled (biopsied) images; the overall PAD AUROC is still reported.

Sampling: class-balanced (``balance = "class"``: every dx7 class equally often; ``"domain_class"``: every
(data set, dx7) cell equally often). Cosine LR after a linear warm-up. Every epoch: validation metrics
overall, ISIC external melanoma-vs-nevus AUROC, PAD malignancy AUROC and per-FST AUROC with n and the gap;
early stopping on the validation score (mean of ISIC external and FST-labelled PAD AUROC) and on fairness degradation (the PAD
per-FST AUROC gap).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mendicant_desktop.core.audit import auroc as _core_auroc
from mendicant_desktop.core.errors import ConfigError
from mendicant_desktop.core.metadata import encode_metadata

from .config import Config
from .data import CLASSES, MALIGNANT_CLASS_IDX, DataIndex, balanced_indices, balanced_weights
from .prune import load_student, save_student
from .reference import ReferenceNet

__all__ = [
    "stage_names",
    "prefix_forward",
    "suffix_forward",
    "suffix_modules",
    "augment_image",
    "dihedral",
    "kd_loss",
    "distillation_loss",
    "malignancy_score",
    "auroc",
    "val_metrics",
    "FeatureCache",
    "PruningTrainer",
    "train_done",
    "run_train",
    "student_from_checkpoint",
]

MEL, NV = CLASSES.index("mel"), CLASSES.index("nv")


# --------------------------------------------------------------------------------------------------
# Splitting the network into a frozen prefix and a trainable suffix
# --------------------------------------------------------------------------------------------------


def stage_names(model: ReferenceNet) -> list[str]:
    b = model.backbone
    return (["stem"] + [f"entry.{i}" for i in range(len(b.entry))] + [f"middle.{i}" for i in range(len(b.middle))]
            + ["block13", "block14"])  # fmt: skip


def _stage(model: ReferenceNet, name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    b = model.backbone
    if name == "stem":
        return lambda x: F.relu(b.conv2(F.relu(b.conv1(x))))
    kind, _, k = name.partition(".")
    if kind == "entry":
        return b.entry[int(k)]
    if kind == "middle":
        return b.middle[int(k)]
    return getattr(b, name)


def _split(model: ReferenceNet, through: str) -> int:
    names = stage_names(model)
    if through == "none":
        return 0
    if through not in names or through == "block14":
        raise ValueError(f"train.freeze_through {through!r} is not a stage of this model ({names[:-1]})")
    return names.index(through) + 1


def prefix_forward(model: ReferenceNet, image: torch.Tensor, through: str) -> torch.Tensor:
    """NHWC 0..255 image -> activation after stage ``through`` (normalised NCHW input for ``"none"``)."""
    x = model.normalization(image.permute(0, 3, 1, 2))
    for name in stage_names(model)[: _split(model, through)]:
        x = _stage(model, name)(x)
    return x


def suffix_forward(model: ReferenceNet, feat: torch.Tensor, meta: torch.Tensor, through: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Cached prefix activation + metadata -> (logits, feature map)."""
    x = feat
    for name in stage_names(model)[_split(model, through) :]:
        x = _stage(model, name)(x)
    return model.head(x.mean(dim=(2, 3)), meta), x


def suffix_modules(model: ReferenceNet, through: str) -> list[nn.Module]:
    names = stage_names(model)[_split(model, through) :]
    b = model.backbone
    mods: list[nn.Module] = []
    for n in names:
        if n == "stem":
            mods += [model.normalization, b.conv1, b.conv2]
        else:
            kind, _, k = n.partition(".")
            mods.append(
                b.entry[int(k)]
                if kind == "entry"
                else b.middle[int(k)]
                if kind == "middle"
                else getattr(b, n)
            )
    return mods


# --------------------------------------------------------------------------------------------------
# Augmentation (torch only)
# --------------------------------------------------------------------------------------------------


def dihedral(x: torch.Tensor, k: int, flip: bool, dims: tuple[int, int]) -> torch.Tensor:
    """Rotate by k*90 degrees in ``dims`` and optionally flip the first of them."""
    if flip:
        x = torch.flip(x, dims=(dims[0],))
    return torch.rot90(x, k, dims) if k % 4 else x


def augment_image(img: torch.Tensor, g: torch.Generator, jitter: float = 0.08) -> torch.Tensor:
    """(H,W,3) 0..255 -> random dihedral transform + mild brightness/contrast/saturation jitter."""
    k = int(torch.randint(0, 4, (1,), generator=g))
    flip = bool(torch.randint(0, 2, (1,), generator=g))
    x = dihedral(img, k, flip, (0, 1))
    if jitter > 0:
        b, c, s = (1 + (torch.rand(3, generator=g) * 2 - 1) * jitter).tolist()
        x = x * b
        mean = x.mean()
        x = (x - mean) * c + mean
        gray = (x * torch.tensor([0.299, 0.587, 0.114])).sum(-1, keepdim=True)
        x = gray + (x - gray) * s
    return x.clamp(0, 255).contiguous()


# --------------------------------------------------------------------------------------------------
# Losses and metrics
# --------------------------------------------------------------------------------------------------


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch."""
    t = temperature
    log_ps = F.log_softmax(student_logits / t, dim=1)
    log_pt = F.log_softmax(teacher_logits / t, dim=1)
    return (t * t) * (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()


def malignancy_score(probs: torch.Tensor) -> torch.Tensor:
    """p(mel) + p(bcc) + p(akiec), the app's malignancy score."""
    return probs[:, list(MALIGNANT_CLASS_IDX)].sum(1)


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor,
                      malignant: torch.Tensor, tc: Any, ce_mask: torch.Tensor | None = None,
                      ) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The training loss (see the module docstring) and its parts.

    ``ce_mask`` (0/1 per row) drops the dx7 cross-entropy of rows whose 7-class label contradicts their
    malignancy label (``train.ce_skip_dx``); those rows still train the malignancy BCE and KD.
    """
    ce_rows = F.cross_entropy(logits, labels, label_smoothing=tc.label_smoothing, reduction="none")
    ce = ce_rows.mean() if ce_mask is None else (ce_rows * ce_mask).sum() / ce_mask.sum().clamp_min(1.0)
    s = malignancy_score(torch.softmax(logits, 1)).clamp(1e-6, 1 - 1e-6)
    bce = F.binary_cross_entropy(s, malignant.float())
    loss = tc.ce_weight * ce + tc.malignant_weight * bce
    parts = {"ce": float(ce.detach()), "bce": float(bce.detach())}
    if teacher_logits is not None and tc.kd_weight > 0:
        valid = ~torch.isnan(teacher_logits).any(1)  # rows without soft targets (kd_datasets) add no KD
        if bool(valid.any()):
            kd = kd_loss(logits[valid], teacher_logits[valid], tc.temperature) * valid.float().mean()
            loss = loss + tc.kd_weight * kd
            parts["kd"] = float(kd.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def within_group_rank_loss(score: torch.Tensor, malignant: torch.Tensor, group: torch.Tensor
                           ) -> torch.Tensor | None:  # fmt: skip
    """Mean ``softplus(-(z_i - z_j))`` over pairs (i malignant, j benign) of the same ``group``, where
    ``z = logit(score)``; ``None`` when the batch holds no such pair. A smooth surrogate of per-group AUROC:
    cross-group pairs are ignored, so only the ranking *within* each group is trained."""
    s = score.clamp(1e-6, 1 - 1e-6)
    z = torch.log(s) - torch.log1p(-s)
    pos = malignant.bool()
    pair = pos[:, None] & ~pos[None, :] & (group[:, None] == group[None, :])
    if not bool(pair.any()):
        return None
    diff = z[:, None] - z[None, :]
    return F.softplus(-diff[pair]).mean()


def rank_pool(index: DataIndex, positions: np.ndarray) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Rows of ``positions`` usable by the ranking loss: PAD images with a clinician FST whose group has both
    malignant and benign training images; with their (FST, malignant) cell keys."""
    recs = [index.records[i] for i in positions]
    labelled = [k for k, r in enumerate(recs) if r.dataset == "pad" and r.fst_source == "label"]
    both = {g for g in {recs[k].fst for k in labelled}
            if len({recs[k].malignant for k in labelled if recs[k].fst == g}) == 2}  # fmt: skip
    rows = np.array([k for k in labelled if recs[k].fst in both], np.int64)
    return rows, [(recs[k].fst, int(recs[k].malignant)) for k in rows]


def fallback_epoch(history: Sequence[dict[str, Any]], max_fst_gap: float) -> dict[str, Any]:
    """The epoch kept when none met the selection rules: the best score among the fine-tuned epochs whose
    per-FST gap is within ``max_fst_gap`` (fairness before score), else the smallest gap, else the last."""
    trained = [h for h in history if h["epoch"] > 0 and not math.isnan(h["val"]["score"])]
    within = [h for h in trained if not h["val"]["pad_fst_gap"] > max_fst_gap]  # a NaN gap is not a violation
    if within:
        return max(within, key=lambda h: h["val"]["score"])
    if trained:
        return min(trained, key=lambda h: (h["val"]["pad_fst_gap"], -h["val"]["score"]))
    return history[-1]


def auroc(y: Sequence[int] | np.ndarray, s: Sequence[float] | np.ndarray) -> float:
    """AUROC via the engine's :func:`mendicant_desktop.core.audit.auroc` (nan if a class is absent)."""
    return float(_core_auroc(np.asarray(y, np.int64), np.asarray(s, np.float64)))


def val_metrics(probs: np.ndarray, index: DataIndex, positions: np.ndarray, cfg: Config) -> dict[str, Any]:
    """The card's validation metrics for ``probs`` (rows aligned with ``positions``)."""
    recs = [index.records[i] for i in positions]
    mal = malignancy_score(torch.from_numpy(probs)).numpy()
    y_mal = np.array([r.malignant for r in recs])
    out: dict[str, Any] = {"n": len(recs)}
    labels = np.array([r.label for r in recs])
    out["accuracy"] = float((probs.argmax(1) == labels).mean()) if len(recs) else float("nan")
    out["malignancy_auroc"] = auroc(y_mal, mal)
    ext = [
        k
        for k, r in enumerate(recs)
        if r.dataset == "isic" and r.pool == "external" and r.dx in ("MEL", "NV")
    ]
    out["isic_external_n"] = len(ext)
    out["isic_external_auroc"] = (
        auroc([recs[k].dx == "MEL" for k in ext], probs[ext, MEL]) if ext else float("nan")
    )
    pad = [k for k, r in enumerate(recs) if r.dataset == "pad"]
    out["pad_n"] = len(pad)
    out["pad_auroc"] = auroc(y_mal[pad], mal[pad]) if pad else float("nan")
    groups = {}
    for fst in ("I", "II", "III", "IV", "V", "VI"):
        ks = [k for k in pad if recs[k].fst == fst and recs[k].fst_source == "label"]
        n_pos = int(y_mal[ks].sum()) if ks else 0
        sufficient = len(ks) >= cfg.fairness.min_group_n and n_pos >= 5 and len(ks) - n_pos >= 5
        groups[fst] = {"n": len(ks), "n_pos": n_pos, "sufficient": sufficient,
                       "auroc": auroc(y_mal[ks], mal[ks]) if ks else float("nan")}  # fmt: skip
    known = [k for k in pad if recs[k].fst_source == "label"]
    out["pad_known_n"] = len(known)
    out["pad_known_auroc"] = auroc(y_mal[known], mal[known]) if known else float("nan")
    out["pad_fst"] = groups
    suff = [g["auroc"] for g in groups.values() if g["sufficient"] and not math.isnan(g["auroc"])]
    out["pad_fst_gap"] = float(max(suff) - min(suff)) if len(suff) >= 2 else float("nan")
    # Selection score: ISIC external + PAD on the clinician-labelled (biopsied) images. The PAD images without
    # an FST label are all non-biopsied, benign and without sex/age: a metadata shortcut inflates "pad_auroc".
    pad_sel = out["pad_known_auroc"] if not math.isnan(out["pad_known_auroc"]) else out["pad_auroc"]
    vals = [v for v in (out["isic_external_auroc"], pad_sel) if not math.isnan(v)]
    out["score"] = float(np.mean(vals)) if vals else float("nan")
    return out


def _fmt(m: dict[str, Any]) -> str:
    fst = " ".join(f"{k}:{v['auroc']:.3f}(n={v['n']})" for k, v in m["pad_fst"].items() if v["n"])
    return (f"score {m['score']:.4f} | ISIC ext mel-nv {m['isic_external_auroc']:.4f} | PAD {m['pad_auroc']:.4f} "
            f"(FST-labelled {m['pad_known_auroc']:.4f}, n={m['pad_known_n']}) "
            f"| gap {m['pad_fst_gap']:.3f} | acc {m['accuracy']:.3f} | FST {fst}")  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Cached prefix activations and teacher logits
# --------------------------------------------------------------------------------------------------


class FeatureCache:
    """``prefix_<split>.npy`` (N, V, C, H, W) and ``teacher_<split>.npy`` (N, Vt, 7); resumable."""

    def __init__(
        self, folder: Path, split: str, positions: np.ndarray, views: int, teacher_views: int
    ) -> None:
        self.folder = folder
        self.split = split
        self.positions = positions
        self.views = views
        self.teacher_views = teacher_views
        self.progress_path = folder / f"progress_{split}.json"

    @property
    def done(self) -> bool:
        return self._progress().get("done", False)

    def _progress(self) -> dict[str, Any]:
        if self.progress_path.is_file():
            return json.loads(self.progress_path.read_text())
        return {}

    def open(self) -> tuple[np.ndarray, np.ndarray | None]:
        feats = np.load(self.folder / f"prefix_{self.split}.npy", mmap_mode="r")
        tpath = self.folder / f"teacher_{self.split}.npy"
        return feats, (np.load(tpath) if tpath.is_file() else None)

    @torch.no_grad()
    def build(self, index: DataIndex, student: ReferenceNet, teacher: ReferenceNet | None, through: str,
              cfg: Config, log: Callable[[str], None], batch: int = 16) -> None:  # fmt: skip
        self.folder.mkdir(parents=True, exist_ok=True)
        n = len(self.positions)
        prog = self._progress()
        start = int(prog.get("n_done", 0))
        fpath = self.folder / f"prefix_{self.split}.npy"
        tpath = self.folder / f"teacher_{self.split}.npy"
        probe = prefix_forward(
            student, torch.from_numpy(np.asarray(index.images[self.positions[:1]], np.float32)), through
        )
        shape = (n, self.views, *probe.shape[1:])
        dtype = np.float16 if cfg.train.cache_dtype == "float16" else np.float32

        def empty_tlog() -> np.ndarray:
            return np.full((n, self.teacher_views, len(CLASSES)), np.nan, np.float32)

        if start == 0 or not fpath.is_file():
            start = 0
            feats = np.lib.format.open_memmap(fpath, mode="w+", dtype=dtype, shape=shape)
            tlog = empty_tlog() if teacher is not None else None
        else:
            feats = np.load(fpath, mmap_mode="r+")
            tlog = np.load(tpath) if (teacher is not None and tpath.is_file()) else (
                empty_tlog() if teacher is not None else None)  # fmt: skip
        kd_sets = set(cfg.train.kd_datasets) if self.split == "train" else {"isic", "pad"}
        student.eval()
        t0 = time.time()
        for a in range(start, n, batch):
            pos = self.positions[a : a + batch]
            imgs = torch.from_numpy(np.asarray(index.images[pos], np.float32))
            meta = torch.from_numpy(index.meta[pos])
            for v in range(self.views):
                if v == 0:
                    x = imgs
                else:
                    x = torch.stack([
                        augment_image(imgs[j], torch.Generator().manual_seed(cfg.run.seed * 7919 + int(p) * 31 + v),
                                      cfg.train.color_jitter)
                        for j, p in enumerate(pos)])  # fmt: skip
                feats[a : a + len(pos), v] = prefix_forward(student, x, through).numpy().astype(dtype)
                if teacher is not None and v < self.teacher_views:
                    use = np.array([index.records[int(p)].dataset in kd_sets for p in pos])
                    rows = np.full((len(pos), len(CLASSES)), np.nan, np.float32)
                    if use.any():
                        sel = torch.from_numpy(np.flatnonzero(use))
                        rows[use] = teacher.logits(x[sel], meta[sel]).numpy()
                    tlog[a : a + len(pos), v] = rows
            done = a + len(pos)
            if (done // batch) % 8 == 0 or done == n:
                feats.flush()
                if tlog is not None:
                    np.save(tpath, tlog)
                self.progress_path.write_text(json.dumps({"n_done": done, "n": n, "done": done == n}))
                rate = (time.time() - t0) / max(1, done - start)
                log(
                    f"cache[{self.split}]: {done}/{n} images ({rate:.2f}s/image, ~{rate * (n - done) / 60:.1f} min left)"
                )
        del feats


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


def train_done(run_dir: str | Path) -> bool:
    return (Path(run_dir) / "train" / "DONE").is_file()


class PruningTrainer:
    """Fine-tunes a pruned student on cached frozen-prefix activations (see the module docstring)."""

    def __init__(self, cfg: Config, run_dir: str | Path, index: DataIndex, student: ReferenceNet,
                 teacher: ReferenceNet | None, *, log: Callable[[str], None] = print,
                 deadline: float | None = None) -> None:  # fmt: skip
        self.cfg = cfg
        self.tc = cfg.train
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "train"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index = index
        self.student = student
        self.teacher = teacher
        self.log = log
        self.t_start = time.time()
        self.wall_before = 0.0
        budget = self.t_start + self.tc.time_budget_minutes * 60
        self.deadline = min(budget, deadline) if deadline else budget
        self.through = self.tc.freeze_through
        if self.tc.early_stop.gate_relative and not self.tc.teacher_on_val:
            raise ConfigError("train.early_stop.gate_relative needs train.teacher_on_val = true (the teacher's "
                              "val metrics are its reference)")  # fmt: skip
        self.train_pos = index.indices("train")
        self.val_pos = index.indices("val")
        tv = self.tc.train_views if self.tc.kd_all_views else 1
        cdir = self.dir / "cache"
        self.train_cache = FeatureCache(cdir, "train", self.train_pos, self.tc.train_views, tv)
        self.val_cache = FeatureCache(cdir, "val", self.val_pos, 1, 1)
        for p in student.parameters():
            p.requires_grad_(False)
        self.trainable = suffix_modules(student, self.through)
        head_params = list(student.head.parameters())
        body_params = [p for m in self.trainable for p in m.parameters()]
        for p in head_params + body_params:
            p.requires_grad_(True)
        self.opt = torch.optim.AdamW(
            [{"params": body_params, "lr": self.tc.lr, "base_lr": self.tc.lr},
             {"params": head_params, "lr": self.tc.lr * self.tc.head_lr_mult,
              "base_lr": self.tc.lr * self.tc.head_lr_mult}],
            weight_decay=self.tc.weight_decay,
        )  # fmt: skip
        # The per-FST ranking loss's pool (train.rank_weight > 0): fixed by the split, so found once.
        self.rank_rows: np.ndarray | None = None
        if self.tc.rank_weight > 0:
            self.rank_rows, self.rank_keys = rank_pool(index, self.train_pos)
            if len(self.rank_rows) == 0:
                raise ConfigError("train.rank_weight > 0 needs FST-labelled PAD training images with both malignant "
                                  "and benign lesions in one FST group; this split has none")  # fmt: skip
            self.rank_groups = {g: i for i, g in enumerate(sorted({k[0] for k in self.rank_keys}))}
        self.steps_per_epoch = max(1, len(self.train_pos) // self.tc.batch_size)
        self.total_steps = self.steps_per_epoch * self.tc.epochs
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.epoch = 0
        self.step = 0
        self.teacher_metrics: dict[str, Any] | None = None

    # -- cache -------------------------------------------------------------------------------------
    def build_cache(self) -> None:
        for cache in (self.val_cache, self.train_cache):
            if not cache.done:
                self.log(f"cache[{cache.split}]: building ({len(cache.positions)} images x {cache.views} views, "
                         f"frozen through {self.through})")  # fmt: skip
                teacher = self.teacher if (cache is self.train_cache or self.tc.teacher_on_val) else None
                cache.build(self.index, self.student, teacher, self.through, self.cfg, self.log)
        self.train_feats, self.train_tlog = self.train_cache.open()
        self.val_feats, self.val_tlog = self.val_cache.open()
        if self.val_tlog is not None:
            probs = torch.softmax(torch.from_numpy(self.val_tlog[:, 0]), 1).numpy()
            self.teacher_metrics = val_metrics(probs, self.index, self.val_pos, self.cfg)
            self.log("teacher (FP32) on val: " + _fmt(self.teacher_metrics))

    # -- one epoch ---------------------------------------------------------------------------------
    def _lr(self) -> float:
        warm = self.tc.warmup_epochs * self.steps_per_epoch
        f = min(1.0, (self.step + 1) / warm) if warm > 0 else 1.0
        prog = min(1.0, self.step / max(1, self.total_steps))
        return f * 0.5 * (1 + math.cos(math.pi * prog))

    def _set_train_mode(self) -> None:
        self.student.eval()
        for m in self.trainable:
            m.train()
        self.student.head.train()

    def sample_epoch(self, epoch: int) -> np.ndarray:
        recs = [self.index.records[i] for i in self.train_pos]
        keys = [r.label for r in recs] if self.tc.balance == "class" else [(r.dataset, r.label) for r in recs]
        rng = np.random.default_rng([self.cfg.run.seed, 11, epoch])
        return balanced_indices(balanced_weights(keys), len(recs), rng)

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], bool]:
        """One epoch; returns (mean loss parts, stopped_by_deadline)."""
        self._set_train_mode()
        # Dropout draws from torch's global generator: seed it per epoch, so an epoch's result depends on neither
        # what ran earlier in the process (``build`` runs prune first) nor on a resume in between.
        torch.manual_seed(int(np.random.default_rng([self.cfg.run.seed, 19, epoch]).integers(2**62)))
        order = self.sample_epoch(epoch)
        rng = np.random.default_rng([self.cfg.run.seed, 13, epoch])
        labels = torch.from_numpy(self.index.labels)
        malignant = torch.from_numpy(self.index.malignant)
        skip = set(self.tc.ce_skip_dx)
        ce_mask = torch.tensor([0.0 if r.dx in skip else 1.0 for r in self.index.records])
        sums: dict[str, float] = {}
        n = 0
        stopped = False
        bs = self.tc.batch_size
        rank_rows = self.rank_rows
        if rank_rows is not None:
            rank_order = rank_rows[balanced_indices(balanced_weights(self.rank_keys), self.steps_per_epoch
                                                    * self.tc.rank_batch,
                                                    np.random.default_rng([self.cfg.run.seed, 17, epoch]))]
        t0 = time.time()
        for b in range(self.steps_per_epoch):
            if time.time() > self.deadline:
                stopped = True
                break
            ks = np.sort(order[b * bs : (b + 1) * bs])
            views = rng.integers(0, self.tc.train_views, size=len(ks))
            feats = torch.from_numpy(
                np.stack([self.train_feats[k, v] for k, v in zip(ks, views, strict=True)]).astype(np.float32)
            )
            n_main = len(ks)
            if rank_rows is not None:  # the ranking batch rides along in the same forward pass (identity view)
                rk_ks = rank_order[b * self.tc.rank_batch : (b + 1) * self.tc.rank_batch]
                feats = torch.cat([feats, torch.from_numpy(np.stack([self.train_feats[k, 0] for k in rk_ks])
                                                           .astype(np.float32))])  # fmt: skip
            if self.tc.feature_dihedral:
                rk = rng.integers(0, 4, size=len(feats))
                fl = rng.integers(0, 2, size=len(feats))
                feats = torch.stack(
                    [dihedral(f, int(r), bool(x), (1, 2)) for f, r, x in zip(feats, rk, fl, strict=True)]
                )
            pos = self.train_pos[ks]
            meta_np = self.index.meta[pos].copy()
            if self.tc.meta_dropout > 0:  # break the "metadata missing => benign" shortcut of PAD
                meta_np[rng.random(len(pos)) < self.tc.meta_dropout] = encode_metadata(None)
            if rank_rows is not None:
                meta_np = np.concatenate([meta_np, self.index.meta[self.train_pos[rk_ks]]])
            meta = torch.from_numpy(meta_np)
            tl = None
            if self.train_tlog is not None:
                tv = np.where(views < self.train_tlog.shape[1], views, 0)
                tl = torch.from_numpy(self.train_tlog[ks, tv])
            lr_f = self._lr()
            for gp in self.opt.param_groups:
                gp["lr"] = gp["base_lr"] * lr_f
            all_logits, _ = suffix_forward(self.student, feats, meta, self.through)
            logits = all_logits[:n_main]
            loss, parts = distillation_loss(logits, tl, labels[pos], malignant[pos], self.tc,
                                            ce_mask[pos] if skip else None)  # fmt: skip
            if rank_rows is not None:
                rk_pos = self.train_pos[rk_ks]
                rl = within_group_rank_loss(
                    malignancy_score(torch.softmax(all_logits[n_main:], 1)), malignant[rk_pos],
                    torch.tensor([self.rank_groups[self.index.records[i].fst] for i in rk_pos]))  # fmt: skip
                if rl is not None:
                    loss = loss + self.tc.rank_weight * rl
                    parts["rank"] = float(rl.detach())
                    parts["loss"] = float(loss.detach())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step += 1
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if b % 20 == 0:
                self.log(f"epoch {epoch} batch {b}/{self.steps_per_epoch} loss {parts['loss']:.4f} "
                         f"lr {self.opt.param_groups[0]['lr']:.2e} ({(time.time() - t0) / (b + 1):.2f}s/batch)")  # fmt: skip
        return {k: v / max(1, n) for k, v in sums.items()} | {"batches": n}, stopped

    @torch.no_grad()
    def predict_val(self) -> np.ndarray:
        self.student.eval()
        out = []
        for a in range(0, len(self.val_pos), 64):
            feats = torch.from_numpy(np.asarray(self.val_feats[a : a + 64, 0], np.float32))
            meta = torch.from_numpy(self.index.meta[self.val_pos[a : a + 64]])
            logits, _ = suffix_forward(self.student, feats, meta, self.through)
            out.append(torch.softmax(logits, 1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)

    def evaluate(self) -> dict[str, Any]:
        return val_metrics(self.predict_val(), self.index, self.val_pos, self.cfg)

    # -- checkpoints -------------------------------------------------------------------------------
    @property
    def ckpt_path(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    def save_checkpoint(self) -> None:
        p = self.ckpt_path
        p.parent.mkdir(parents=True, exist_ok=True)
        payload = {"epoch": self.epoch, "step": self.step, "total_steps": self.total_steps,
                   "horizon_shrunk": self.total_steps < self.steps_per_epoch * self.tc.epochs,
                   "model": self.student.state_dict(),
                   "opt": self.opt.state_dict(), "history": self.history, "best": self.best,
                   "teacher_metrics": self.teacher_metrics,
                   "wall_seconds": self.wall_before + time.time() - self.t_start}  # fmt: skip
        torch.save(payload, p.with_suffix(".tmp"))
        p.with_suffix(".tmp").replace(p)
        torch.save(payload | {"opt": None}, p.parent / f"epoch_{self.epoch:03d}.pt")

    def load_checkpoint(self) -> bool:
        if not self.ckpt_path.is_file():
            return False
        payload = torch.load(self.ckpt_path, map_location="cpu", weights_only=False)
        self.student.load_state_dict(payload["model"])
        self.opt.load_state_dict(payload["opt"])
        self.epoch, self.step = payload["epoch"], payload["step"]
        if payload.get("horizon_shrunk"):  # a deadline shortened the cosine: keep it (never lengthen)
            self.total_steps = min(self.total_steps, payload.get("total_steps", self.total_steps))
        self.history, self.best = payload["history"], payload["best"]
        self.teacher_metrics = payload.get("teacher_metrics") or self.teacher_metrics
        self.wall_before = float(payload.get("wall_seconds", 0.0))  # wall time of the calls before this resume
        self.log(f"resumed from {self.ckpt_path} after epoch {self.epoch} (step {self.step})")
        return True

    # -- the loop ----------------------------------------------------------------------------------
    def _fit_schedule_to_deadline(self, epoch_seconds: float) -> None:
        """Shorten the cosine horizon to the epochs that still fit before the deadline (never lengthen).

        A deadline cut in the middle of a long cosine would stop at a high learning rate; re-planning after
        each epoch lets the schedule anneal within the time actually available.
        """
        left = self.deadline - time.time()
        fit = self.epoch + max(1, int(left // max(epoch_seconds, 1e-6)))
        epochs = max(self.epoch + 1, min(self.tc.epochs, fit))
        total = epochs * self.steps_per_epoch
        if total < self.total_steps:
            self.log(f"schedule: {left / 60:.0f} min left at {epoch_seconds / 60:.1f} min/epoch -> cosine horizon "
                     f"{self.total_steps // self.steps_per_epoch} -> {epochs} epochs")  # fmt: skip
            self.total_steps = total

    def _eligible(self, m: dict[str, Any]) -> bool:
        """May this epoch be selected? Its per-FST gap must be <= ``early_stop.max_fst_gap``; with
        ``early_stop.gate_relative`` it must also meet the gate's limits relative to the FP32 teacher on val
        (AUROC drops and gap increase from ``[gate]``), so fairness degradation is never traded for score."""
        gap = m["pad_fst_gap"]
        if not (math.isnan(gap) or gap <= self.tc.early_stop.max_fst_gap):
            return False
        t = self.teacher_metrics
        if not self.tc.early_stop.gate_relative or not t:
            return True
        g = self.cfg.gate
        for key in ("isic_external_auroc", "pad_auroc"):
            if not (math.isnan(m[key]) or math.isnan(t[key]) or m[key] >= t[key] - g.max_auroc_drop):
                return False
        tg = t["pad_fst_gap"]
        return math.isnan(gap) or math.isnan(tg) or gap <= tg + g.max_gap_increase

    def _stop_reason(self) -> str | None:
        """Why training should stop now (early stopping on the val score and on fairness), else None."""
        es = self.tc.early_stop
        e = self.epoch
        best_epoch = self.best["epoch"] if self.best else 0
        if e >= es.min_epochs and e - best_epoch >= es.patience:
            return f"no better val score for {es.patience} epochs"
        ref_gap = self.best["val"]["pad_fst_gap"] if self.best else float("nan")
        recent = [h["val"]["pad_fst_gap"] for h in self.history[-es.patience :] if h["epoch"] > 0]
        if (e >= es.min_epochs and not math.isnan(ref_gap) and len(recent) == es.patience
                and all(g > ref_gap + es.gap_tolerance for g in recent)):  # fmt: skip
            return "fairness degradation (per-FST gap)"
        return None

    def fit(self, resume: bool = True) -> dict[str, Any]:
        if resume:
            self.load_checkpoint()
        self.build_cache()
        if self.epoch == 0 and not self.history:
            m0 = self.evaluate()
            self.log("epoch 0 (pruned, before fine-tuning): " + _fmt(m0))
            self.history.append({"epoch": 0, "val": m0})
        stop_reason = "epochs"
        resumed_stop = self._stop_reason() if self.epoch > 0 else None  # a run resumed after it had stopped
        if resumed_stop:
            stop_reason = resumed_stop
        while not resumed_stop and self.epoch < min(self.tc.epochs, -(-self.total_steps // self.steps_per_epoch)):
            if time.time() > self.deadline:
                stop_reason = "time budget"
                break
            e = self.epoch + 1
            t0 = time.time()
            parts, stopped = self.train_epoch(e)
            m = self.evaluate()
            self.epoch = e
            rec = {
                "epoch": e,
                "train": parts,
                "val": m,
                "seconds": round(time.time() - t0, 1),
                "partial": stopped,
            }
            self.history.append(rec)
            improved = self._eligible(m) and (self.best is None or m["score"] > self.best["val"]["score"])
            if improved:
                self.best = rec
                save_student(self.student, self.dir / "student.pt", train_metrics=m, epoch=e,
                             freeze_through=self.through)  # fmt: skip
            self.log(f"epoch {e}: {'*' if improved else ' '} " + _fmt(m) + f" | loss {parts.get('loss', float('nan')):.4f} "
                     f"({rec['seconds']:.0f}s{', partial' if stopped else ''})")  # fmt: skip
            self._fit_schedule_to_deadline(time.time() - t0)
            self.save_checkpoint()
            if stopped:
                stop_reason = "time budget"
                break
            reason = self._stop_reason()
            if reason:
                stop_reason = reason
                break
        if self.best is None:  # nothing eligible: fall back step by step, flagged (the gate will say why)
            self.best = fallback_epoch(self.history, self.tc.early_stop.max_fst_gap)
            ck = self.dir / "checkpoints" / f"epoch_{self.best['epoch']:03d}.pt"
            if self.best["epoch"] != self.epoch and ck.is_file():
                self.student.load_state_dict(torch.load(ck, map_location="cpu", weights_only=False)["model"])
            self.log(f"train: no epoch met the selection rules; keeping epoch {self.best['epoch']} (best score within "
                     f"early_stop.max_fst_gap, else the smallest gap; flagged not_eligible)")  # fmt: skip
            save_student(self.student, self.dir / "student.pt", train_metrics=self.best["val"],
                         epoch=self.best["epoch"], freeze_through=self.through, not_eligible=True)  # fmt: skip
        summary = {
            "stop_reason": stop_reason, "epochs_run": self.epoch, "best_epoch": self.best["epoch"],
            "best_val": self.best["val"], "teacher_val": self.teacher_metrics, "history": self.history,
            "wall_seconds": round(self.wall_before + time.time() - self.t_start, 1), "freeze_through": self.through,
        }  # fmt: skip
        with open(self.dir / "metrics.json", "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2, default=float)
        (self.dir / "DONE").write_text(f"{stop_reason}\n")
        self.log(f"train: done ({stop_reason}); best epoch {self.best['epoch']}: " + _fmt(self.best["val"]))
        return summary


def run_train(cfg: Config, run_dir: str | Path, index: DataIndex, teacher: ReferenceNet | None, *,
              log: Callable[[str], None] = print, resume: bool = True, deadline: float | None = None
              ) -> dict[str, Any]:  # fmt: skip
    """The train stage: ``<run>/prune/pruned.pt`` -> ``<run>/train/student.pt`` (+ metrics, log, checkpoints)."""
    student = load_student(Path(run_dir) / "prune" / "pruned.pt")
    trainer = PruningTrainer(cfg, run_dir, index, student, teacher, log=log, deadline=deadline)
    return trainer.fit(resume=resume)


def student_from_checkpoint(run_dir: str | Path, epoch: int) -> ReferenceNet:
    """The student after ``epoch`` (from ``<run>/train/checkpoints/epoch_NNN.pt``) as a ReferenceNet (eval)."""
    run_dir = Path(run_dir)
    model = load_student(run_dir / "prune" / "pruned.pt")
    payload = torch.load(run_dir / "train" / "checkpoints" / f"epoch_{epoch:03d}.pt", map_location="cpu",
                         weights_only=False)  # fmt: skip
    model.load_state_dict(payload["model"])
    return model.eval()
