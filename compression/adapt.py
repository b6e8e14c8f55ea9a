"""The adapted teacher: the reference backbone, frozen in FP32, with a new head trained on all three data sets.

Why: the reference network (HAM10000 Xception) generalises poorly off HAM10000; a logistic regression on its own
frozen, pooled features from several depths beats its own head by 0.1-0.3 AUROC on ISIC external, PAD and
Fitzpatrick17k. This module is that head, done properly:

- :func:`read_all_records` reads ISIC dermoscopy, PAD-UFES-20 and Fitzpatrick17k into one record list;
- :func:`three_way_split` gives the train / select / gate split (PAD by patient, Fitzpatrick17k by
  ``duplicate_group``, ISIC external stratified by dx, the ham10000 pool train-only). Only ``compression
  validate`` reads gate; model selection (C, the threshold) reads select;
- :func:`extract_features` runs the FP32 backbone once per image and view with the global-average-pooled
  activations of :data:`TAPS` as extra graph outputs, cached under a key that covers the model bytes, every
  input's bytes, this module's code, the library versions and the CPU's features;
- :func:`fit_heads` fits a binary malignancy head and a 7-class head (L2 logistic regression, patient metadata
  blanked on a copy of every training row so that "metadata missing" is no shortcut to "benign");
- :func:`build_teacher_onnx` grafts the head onto the backbone graph: ``probs`` are the 7 classes re-weighted so
  that p(mel)+p(bcc)+p(akiec) equals the direct malignancy output exactly, ``features`` is block14's map (Grad-CAM)
  and ``malignancy`` the direct output.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mendicant_desktop.core.cpu import cpu_features
from mendicant_desktop.core.metadata import Metadata, encode_metadata
from mendicant_desktop.core.preprocess import MODEL_SIZE, load_image, preprocess

from .data import CLASSES, Record, read_records

FITZ = "fitzpatrick17k_clinical"
SPLITS = ("train", "select", "gate")
DDI_GROUPS: dict[str, tuple[str, ...]] = {"I-II": ("I", "II"), "III-IV": ("III", "IV"), "V-VI": ("V", "VI")}

#: The backbone depths whose activations are pooled for the head (ONNX node name -> short name). The residual
#: stream after the entry flow, after middle blocks 3 and 7, after block13 and block14's output: colour and texture
#: (shallow) as well as the HAM10000-specific semantics (deep); shallow features transfer better across domains.
TAPS: dict[str, str] = {
    "/backbone/entry/2/Add": "entry",
    "/backbone/middle/3/Add": "middle3",
    "/backbone/middle/7/Add": "middle7",
    "/backbone/block13/Add": "block13",
    "/backbone/block14/Relu_1": "block14",
}

#: Fitzpatrick17k conditions that have a HAM10000 class (for the 7-class head); the rest train only the
#: malignancy head. Actinic keratosis is "akiec", as is squamous-cell carcinoma (Bowen's disease in HAM10000).
FITZ_DX7: dict[str, str] = {
    "melanoma": "mel",
    "basal-cell-carcinoma": "bcc",
    "squamous-cell-carcinoma": "akiec",
    "actinic-keratosis": "akiec",
    "seborrheic-keratosis": "bkl",
    "dermatofibroma": "df",
    "pyogenic-granuloma": "vasc",
}


def _roman(v: str) -> str:
    v = (v or "").strip()
    roman = ("I", "II", "III", "IV", "V", "VI")
    if v.isdigit() and 1 <= int(v) <= 6:
        return roman[int(v) - 1]
    return v.upper() if v.upper() in roman else "unknown"


def read_fitzpatrick(data_dir: str | Path) -> list[Record]:
    """Fitzpatrick17k rows as :class:`Record` (``label`` -1 where the condition has no HAM10000 class)."""
    path = Path(data_dir) / FITZ / "labels.csv"
    out: list[Record] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            cond = row["condition"].strip()
            dx7 = FITZ_DX7.get(cond, "")
            fst = _roman(row.get("fst", ""))
            out.append(Record(
                dataset="fitz", pool="fitz", image=row["image"], relpath=f"{FITZ}/images/{row['image']}",
                dx=cond, dx7=dx7, label=CLASSES.index(dx7) if dx7 else -1, malignant=int(row["malignant"]),
                patient_id=row["duplicate_group"].strip(), fst=fst,
                fst_source="label" if fst != "unknown" else "estimated",
                extra={"three_partition": row.get("three_partition", "").strip()},
            ))  # fmt: skip
    return out


def read_all_records(data_dir: str | Path) -> list[Record]:
    """ISIC, then PAD, then Fitzpatrick17k, in file order (the order every array of a run follows)."""
    return [*read_records(data_dir), *read_fitzpatrick(data_dir)]


def _rng(seed: int, *tags: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) for t in tags)])


def _assign_groups(groups: dict[str, list[int]], strata: dict[str, list[str]], fractions: Sequence[float],
                   seed: int, tag: str, split: list[str]) -> None:  # fmt: skip
    """Whole groups to select/gate per stratum, filling each to its share of the stratum's images."""
    for key, gids in sorted(strata.items()):
        n_img = sum(len(groups[g]) for g in gids)
        targets = [f * n_img for f in fractions]
        counts = [0.0] * len(fractions)
        perm = _rng(seed, tag, key).permutation(len(gids))
        for j in perm:
            g = gids[j]
            size = len(groups[g])
            for s in range(len(fractions)):
                if counts[s] + size / 2 <= targets[s]:
                    for i in groups[g]:
                        split[i] = SPLITS[s + 1]
                    counts[s] += size
                    break


def three_way_split(records: Sequence[Record], *, select: float, gate: float, seed: int) -> list[str]:
    """``train`` / ``select`` / ``gate`` per record, deterministic in (records, fractions, seed).

    ham10000 -> train (the reference was trained on it). ISIC external: by image, stratified by dx. PAD: by
    patient, stratified by (the patient's clinician FST, any malignant). Fitzpatrick17k: by ``duplicate_group``,
    stratified by (DDI group of the FST label, malignant). Shares are of images within each stratum.
    """
    split = ["train"] * len(records)
    fr = (select, gate)
    by_dx: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.dataset == "isic" and r.pool == "external":
            by_dx[r.dx].append(i)
    for dx, idx in sorted(by_dx.items()):
        perm = _rng(seed, "isic3", dx).permutation(len(idx))
        n_sel, n_gate = int(round(len(idx) * select)), int(round(len(idx) * gate))
        for k, j in enumerate(perm):
            if k < n_gate:
                split[idx[j]] = "gate"
            elif k < n_gate + n_sel:
                split[idx[j]] = "select"
    for ds in ("pad", "fitz"):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            if r.dataset == ds:
                groups[r.patient_id or f"{ds}:{r.image}"].append(i)
        strata: dict[str, list[str]] = defaultdict(list)
        for gid, idx in sorted(groups.items()):
            fsts = sorted({records[i].fst for i in idx if records[i].fst_source == "label"})
            f0 = fsts[0] if fsts else "unknown"
            if ds == "fitz":
                f0 = ddi_group(f0)
            strata[f"{f0}|{max(records[i].malignant for i in idx)}"].append(gid)
        _assign_groups(groups, strata, fr, seed, f"{ds}3", split)
    return split


def ddi_group(fst: str) -> str:
    """I-II / III-IV / V-VI for a Roman FST, else ``unknown``."""
    for name, members in DDI_GROUPS.items():
        if fst in members:
            return name
    return "unknown"


def manifest_sha256(records: Sequence[Record], split: Sequence[str]) -> str:
    """A digest of the split: image paths, content hashes and their split, in order."""
    h = hashlib.sha256()
    for r, s in zip(records, split):
        h.update(f"{r.relpath}\t{r.sha256}\t{s}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def tap_model(fp32_onnx: str | os.PathLike) -> Any:
    """The FP32 backbone graph with the head removed and one ``pool_<tap>`` (N, C) output per tap."""
    import onnx
    from onnx import helper

    m = onnx.load(str(fp32_onnx))
    g = m.graph
    by_name = {n.name: n for n in g.node}
    missing = [t for t in TAPS if t not in by_name]
    if missing:
        raise ValueError(f"{fp32_onnx}: no node {missing} (not the reference Xception graph?)")
    axes = helper.make_tensor("adapt_pool_axes", onnx.TensorProto.INT64, [2], [2, 3])
    g.initializer.append(axes)
    del g.output[:]
    for node_name, short in TAPS.items():
        src = by_name[node_name].output[0]
        g.node.append(helper.make_node("ReduceMean", [src, "adapt_pool_axes"], [f"pool_{short}"], keepdims=0,
                                       name=f"/head/pool_{short}"))  # fmt: skip
        g.output.append(helper.make_tensor_value_info(f"pool_{short}", onnx.TensorProto.FLOAT, None))
    _prune_dead(g)
    return m


def _prune_dead(g: Any) -> None:
    """Drop nodes (and initializers) that no graph output depends on."""
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(n.input)
    keep.reverse()
    del g.node[:]
    g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(inits)
    ins = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(ins)


def _tap_dims(model: Any) -> list[int]:
    """Channels of each tap, from the weights of the Conv feeding it (the graph has no static shapes)."""
    from onnx import numpy_helper

    g = model.graph
    shapes = {t.name: numpy_helper.to_array(t).shape for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    by_name = {n.name: n for n in g.node}
    out = []
    for node_name in TAPS:
        n = by_name[node_name]
        while n.op_type != "Conv":
            n = producer[n.input[-1] if n.op_type == "Add" else n.input[0]]
        out.append(int(shapes[n.input[1]][0]))
    return out


def library_versions() -> dict[str, str]:
    import onnxruntime
    import PIL

    return {"python": platform.python_version(), "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "pillow": PIL.__version__}  # fmt: skip


def _code_sha() -> str:
    """The code that decides the features: the tap graph, the views, the extraction loop, the app's decoder and
    preprocessing (their source text), so an edit elsewhere in this module does not invalidate the cache."""
    import inspect

    from mendicant_desktop.core import preprocess as pre

    parts = [inspect.getsource(f) for f in (tap_model, _prune_dead, view_transform, extract_features)]
    # The app's pixel path (decode, colour, EXIF, resize), not the whole module: a reworded error message there
    # must not invalidate hours of features.
    parts += [inspect.getsource(f) for f in (pre.load_image, pre._open, pre._to_rgb8, pre._axis_weights,
                                             pre.resize_bilinear, pre.preprocess)]  # fmt: skip
    parts.append(repr(pre.MODEL_SIZE))
    parts.append(repr(TAPS))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def feature_cache_key(model_sha: str, image_shas: Sequence[str], view: str) -> str:
    """Covers the model bytes, every input's bytes, this module's code, library versions and CPU features."""
    h = hashlib.sha256()
    payload = {"model": model_sha, "view": view, "code": _code_sha(), "libs": library_versions(),
               "cpu": cpu_features(), "images": hashlib.sha256("\n".join(image_shas).encode()).hexdigest()}
    h.update(json.dumps(payload, sort_keys=True).encode())
    return h.hexdigest()


def view_transform(view: str) -> Callable[[np.ndarray], np.ndarray]:
    if view == "id":
        return lambda x: x
    if view == "hflip":
        return lambda x: x[:, ::-1]
    if view == "vflip":
        return lambda x: x[::-1]
    raise ValueError(f"unknown view {view!r}")


@dataclass
class Features:
    """Pooled tap features per record (rows aligned with the record list)."""

    pools: dict[str, np.ndarray]  # short tap name -> (N, C) float32
    key: str = ""
    seconds: float = 0.0

    def matrix(self, taps: Sequence[str] | None = None) -> np.ndarray:
        taps = list(taps or TAPS.values())
        return np.concatenate([self.pools[t] for t in taps], axis=1)


def pool_model(adapted_onnx: str | os.PathLike) -> Any:
    """An adapted model (FP32 or INT8) cut to its ``pool_<tap>`` outputs: what the head sees, as this graph (and,
    for INT8, this CPU's kernels) computes it."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(adapted_onnx))
    del m.graph.output[:]
    for short in TAPS.values():
        m.graph.output.append(helper.make_tensor_value_info(f"pool_{short}", TensorProto.FLOAT, ["batch", None]))
    _prune_dead(m.graph)
    return m


def extract_features(
    fp32_onnx: str | os.PathLike,
    records: Sequence[Record],
    data_dir: str | Path,
    cache_dir: str | Path,
    *,
    view: str = "id",
    rows: Sequence[int] | None = None,
    threads: int = 2,
    batch: int = 8,
    graph: Callable[[str | os.PathLike], Any] | None = None,
    log: Callable[[str], None] = print,
) -> Features:
    """Pooled tap features of ``records[rows]`` (all rows by default) for one view, cached.

    The cache file is named by :func:`feature_cache_key`; a partial file (``.part.npz``) lets a stopped run
    resume where it left off. Every record must carry its ``sha256`` (see :func:`hash_records`).
    """
    import onnxruntime as ort

    rows = list(range(len(records))) if rows is None else list(rows)
    model = (graph or tap_model)(fp32_onnx)
    model_bytes = model.SerializeToString()
    tag = "" if graph is None else f"{graph.__name__}:"
    key = feature_cache_key(hashlib.sha256(Path(fp32_onnx).read_bytes()).hexdigest(),
                            [records[i].sha256 for i in rows], tag + view)  # fmt: skip
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / f"features_{tag.rstrip(':') + '_' if tag else ''}{view}_{key[:16]}.npz"
    if final.is_file():
        with np.load(final) as z:
            if str(z["key"]) == key:
                return Features({t: z[t] for t in TAPS.values()}, key=key, seconds=float(z["seconds"]))
    part = final.with_suffix(".part.npz")
    done = 0
    pools: dict[str, list[np.ndarray]] = {t: [] for t in TAPS.values()}
    seconds = 0.0
    if part.is_file():
        with np.load(part) as z:
            if str(z["key"]) == key:
                done = int(z["done"])
                seconds = float(z["seconds"])
                pools = {t: [z[t][:done]] for t in TAPS.values()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])
    out_names = [f"pool_{t}" for t in TAPS.values()]
    tf = view_transform(view)
    root = Path(data_dir)
    t0 = time.perf_counter()
    last_save = t0
    for s in range(done, len(rows), batch):
        chunk = rows[s : s + batch]
        x = np.stack([preprocess(np.ascontiguousarray(tf(load_image(root / records[i].relpath))), MODEL_SIZE)
                      for i in chunk]).astype(np.float32)  # fmt: skip
        outs = sess.run(out_names, {"image": x})
        for t, o in zip(TAPS.values(), outs):
            pools[t].append(o.astype(np.float32))
        done = s + len(chunk)
        now = time.perf_counter()
        if now - last_save > 60 or done == len(rows):
            arrs = {t: np.concatenate(v) for t, v in pools.items()}
            pools = {t: [a] for t, a in arrs.items()}
            np.savez(part, key=key, done=done, seconds=seconds + now - t0, **arrs)
            last_save = now
            log(f"adapt: features[{view}] {done}/{len(rows)} ({now - t0:.0f} s)")
    seconds += time.perf_counter() - t0
    arrs = {t: np.concatenate(v) if v else np.zeros((0, 0), np.float32) for t, v in pools.items()}
    np.savez(final, key=key, seconds=seconds, **arrs)
    part.unlink(missing_ok=True)
    return Features(arrs, key=key, seconds=seconds)


def hash_records(records: Sequence[Record], data_dir: str | Path) -> None:
    """Fill ``sha256`` of every record from its file's bytes."""
    root = Path(data_dir)
    for r in records:
        if not r.sha256:
            r.sha256 = hashlib.sha256((root / r.relpath).read_bytes()).hexdigest()


def metadata_matrix(records: Sequence[Record], *, blank: bool = False) -> np.ndarray:
    """(N, 10) encoded patient metadata; ``blank`` gives every row the "nothing entered" encoding."""
    empty = encode_metadata(None)
    return np.stack([empty if blank else encode_metadata(Metadata(age=r.age, sex=r.sex, site=r.site))
                     for r in records]).astype(np.float32)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# Heads
# --------------------------------------------------------------------------------------------------

MAL_IDX: tuple[int, ...] = tuple(CLASSES.index(c) for c in ("akiec", "bcc", "mel"))
BEN_IDX: tuple[int, ...] = tuple(i for i in range(len(CLASSES)) if i not in MAL_IDX)


@dataclass(frozen=True)
class LinearHeads:
    """Both heads on the standardised tap features and the metadata, as plain arrays.

    ``w7`` (D+10, 7), ``b7`` (7,): the 7-class logits; ``wm`` (D+10,), ``bm``: the malignancy logit. ``mu``/``sd``
    (D,) standardise the pooled features (the metadata enters raw). ``taps`` and ``dims`` give the layout of D.
    """

    taps: tuple[str, ...]
    dims: tuple[int, ...]
    mu: np.ndarray
    sd: np.ndarray
    w7: np.ndarray
    b7: np.ndarray
    wm: np.ndarray
    bm: float
    c7: float
    cm: float

    def logits(self, feats: np.ndarray, meta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z = np.concatenate([(feats - self.mu) / self.sd, meta], axis=1)
        return z @ self.w7 + self.b7, z @ self.wm + self.bm

    def probs(self, feats: np.ndarray, meta: np.ndarray) -> np.ndarray:
        z7, zm = self.logits(feats, meta)
        return compose(z7, zm)

    def folded(self) -> tuple[np.ndarray, np.ndarray]:
        """(D+10, 8) weights and (8,) bias acting on the raw features: standardisation folded in."""
        w = np.concatenate([self.w7, self.wm[:, None]], axis=1).astype(np.float64)
        b = np.concatenate([self.b7, [self.bm]]).astype(np.float64)
        d = len(self.mu)
        wf = w.copy()
        wf[:d] = w[:d] / self.sd[:, None]
        bf = b - (self.mu / self.sd) @ w[:d]
        return wf.astype(np.float32), bf.astype(np.float32)


def compose(z7: np.ndarray, zm: np.ndarray) -> np.ndarray:
    """7-class probabilities whose malignant share is the direct malignancy output.

    q = softmax(z7) orders the classes within each side; m = sigmoid(zm) is the malignancy. p_c =
    m q_c / sum_mal q for akiec/bcc/mel and (1-m) q_c / sum_ben q for the rest, so p(mel)+p(bcc)+p(akiec) = m.
    """
    z = z7 - z7.max(axis=1, keepdims=True)
    q = np.exp(z)
    q /= q.sum(axis=1, keepdims=True)
    m = 1.0 / (1.0 + np.exp(-np.asarray(zm, np.float64)))
    p = np.empty_like(q, dtype=np.float64)
    qm = q[:, list(MAL_IDX)].sum(axis=1)
    qb = q[:, list(BEN_IDX)].sum(axis=1)
    for c in range(q.shape[1]):
        p[:, c] = m * q[:, c] / qm if c in MAL_IDX else (1 - m) * q[:, c] / qb
    return p.astype(np.float32)


def training_rows(records: Sequence[Record], rows: Sequence[int], feats_by_view: Sequence[np.ndarray],
                  ) -> tuple[np.ndarray, np.ndarray, list[Record], np.ndarray]:  # fmt: skip
    """Stack the training views; records with metadata appear twice per view: as entered and blanked.

    Returns (features, metadata, the record of each row, sample weights). Weights balance the three data
    sets (each counts as much in total) and give the two metadata copies half a weight each.
    """
    feats, metas, recs, w = [], [], [], []
    blank = encode_metadata(None)
    for fv in feats_by_view:
        for k, i in enumerate(rows):
            r = records[i]
            m = encode_metadata(Metadata(age=r.age, sex=r.sex, site=r.site))
            copies = [m] if np.array_equal(m, blank) else [m, blank]
            for mm in copies:
                feats.append(fv[k])
                metas.append(mm)
                recs.append(r)
                w.append(1.0 / len(copies))
    w_arr = np.asarray(w, np.float64)
    ds = np.array([r.dataset for r in recs])
    for d in np.unique(ds):
        w_arr[ds == d] *= len(ds) / (len(np.unique(ds)) * w_arr[ds == d].sum())
    return np.stack(feats).astype(np.float32), np.stack(metas).astype(np.float32), recs, w_arr


def seven_class_mask(recs: Sequence[Record]) -> np.ndarray:
    """Rows that train the 7-class head: a HAM10000 class, and not PAD's ACK (benign there, yet dx7 akiec)."""
    return np.array([r.label >= 0 and not (r.dataset == "pad" and r.dx == "ACK") for r in recs])


def fit_heads(feats: np.ndarray, meta: np.ndarray, recs: Sequence[Record], weights: np.ndarray, *,
              c7: float, cm: float, taps: Sequence[str], dims: Sequence[int], seed: int = 0) -> LinearHeads:  # fmt: skip
    """L2 logistic regressions (scikit-learn, developer side only): malignancy on every row, 7 classes where known."""
    from sklearn.linear_model import LogisticRegression

    mu = feats.mean(axis=0).astype(np.float64)
    sd = feats.std(axis=0).astype(np.float64)
    sd = np.where(sd > 1e-6, sd, 1.0)
    z = np.concatenate([(feats - mu) / sd, meta], axis=1).astype(np.float32)
    y_m = np.array([r.malignant for r in recs])
    lm = LogisticRegression(C=cm, max_iter=1000, tol=1e-4, class_weight="balanced", random_state=seed)
    lm.fit(z, y_m, sample_weight=weights)
    mask = seven_class_mask(recs)
    y7 = np.array([r.label for r in recs])[mask]
    l7 = LogisticRegression(C=c7, max_iter=1000, tol=1e-4, class_weight="balanced", random_state=seed)
    l7.fit(z[mask], y7, sample_weight=weights[mask])
    w7 = np.zeros((z.shape[1], len(CLASSES)))
    b7 = np.full(len(CLASSES), -30.0)  # a class absent from training can never be predicted
    for j, c in enumerate(l7.classes_):
        w7[:, c] = l7.coef_[j]
        b7[c] = l7.intercept_[j]
    return LinearHeads(taps=tuple(taps), dims=tuple(int(d) for d in dims), mu=mu, sd=sd, w7=w7, b7=b7,
                       wm=lm.coef_[0].astype(np.float64), bm=float(lm.intercept_[0]), c7=float(c7), cm=float(cm))


# --------------------------------------------------------------------------------------------------
# The adapted teacher as one ONNX graph
# --------------------------------------------------------------------------------------------------

#: Sidecar arrays for the app's numpy Grad-CAM of a linear head (see mendicant_desktop.core.saliency.LinearHead).
LINEAR_HEAD_KEYS: tuple[str, ...] = ("linear_w_features", "linear_b")


def build_teacher_onnx(fp32_onnx: str | os.PathLike, heads: LinearHeads, out_path: str | os.PathLike) -> Path:
    """Graft ``heads`` onto the reference backbone: outputs ``probs`` (N,7), ``features`` (N,2048,h,w) and
    ``malignancy`` (N,1). Every added node is named ``/head/...`` so INT8 quantization leaves it FP32. Also
    writes ``<out>.head.npz`` (the block14 rows of the folded weights, for Grad-CAM)."""
    wf, bf = heads.folded()
    return graft_head(fp32_onnx, wf, bf, out_path)


def head_weights(model: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The folded head weights (``head.w``, ``head.b``) of an adapted model, FP32 or INT8 (its head is FP32)."""
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in onnx.load(str(model)).graph.initializer if t.name in ("head.w", "head.b")}
    if len(inits) != 2:
        raise ValueError(f"{model}: no FP32 head.w/head.b initializers (not an adapted model?)")
    return numpy_helper.to_array(inits["head.w"]), numpy_helper.to_array(inits["head.b"])


def fp32_counterpart(int8_model: str | os.PathLike, fp32_backbone: str | os.PathLike,
                     out_path: str | os.PathLike) -> Path:  # fmt: skip
    """The FP32 counterpart of a bundled INT8 adapted model: the reference backbone with the bundle's own head."""
    wf, bf = head_weights(int8_model)
    return graft_head(fp32_backbone, wf, bf, out_path)


def graft_head(fp32_onnx: str | os.PathLike, wf: np.ndarray, bf: np.ndarray, out_path: str | os.PathLike) -> Path:
    """See :func:`build_teacher_onnx`; ``wf`` (D+10, 8) and ``bf`` (8,) act on the raw pooled taps + metadata."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = tap_model(fp32_onnx)
    g = m.graph
    del g.output[:]
    taps = tuple(TAPS.values())
    dims = _tap_dims(m)
    g.input.append(helper.make_tensor_value_info("meta", TensorProto.FLOAT, ["batch", 10]))
    pools = [f"pool_{t}" for t in taps]
    mal_mask = np.zeros(len(CLASSES), np.float32)
    mal_mask[list(MAL_IDX)] = 1.0
    inits = {
        "head.w": wf, "head.b": bf, "head.mal_mask": mal_mask, "head.ben_mask": 1.0 - mal_mask,
        "head.split": np.array([len(CLASSES), 1], np.int64), "head.one": np.array(1.0, np.float32),
        "head.sum_axes": np.array([1], np.int64),
    }  # fmt: skip
    for k, v in inits.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(v), k))

    def node(op: str, ins: list[str], outs: list[str], **kw: Any) -> None:
        g.node.append(helper.make_node(op, ins, outs, name=f"/head/{outs[0]}", **kw))

    node("Concat", [*pools, "meta"], ["head_x"], axis=1)
    node("Gemm", ["head_x", "head.w", "head.b"], ["head_z"])
    node("Split", ["head_z", "head.split"], ["head_z7", "head_zm"], axis=1)
    node("Softmax", ["head_z7"], ["head_q"], axis=1)
    node("Sigmoid", ["head_zm"], ["malignancy"])
    node("Mul", ["head_q", "head.mal_mask"], ["head_qmal"])
    node("Mul", ["head_q", "head.ben_mask"], ["head_qben"])
    node("ReduceSum", ["head_qmal", "head.sum_axes"], ["head_sm"], keepdims=1)
    node("ReduceSum", ["head_qben", "head.sum_axes"], ["head_sb"], keepdims=1)
    node("Div", ["malignancy", "head_sm"], ["head_fm"])
    node("Sub", ["head.one", "malignancy"], ["head_notm"])
    node("Div", ["head_notm", "head_sb"], ["head_fb"])
    node("Mul", ["head_qmal", "head_fm"], ["head_pm"])
    node("Mul", ["head_qben", "head_fb"], ["head_pb"])
    node("Add", ["head_pm", "head_pb"], ["probs"])
    feat_src = next(n.output[0] for n in g.node if n.name == "/backbone/block14/Relu_1")
    if feat_src != "features":
        node("Identity", [feat_src], ["features"])
    g.output.extend([
        helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(CLASSES)]),
        helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", int(dims[-1]), "h", "w"]),
        helper.make_tensor_value_info("malignancy", TensorProto.FLOAT, ["batch", 1]),
    ])  # fmt: skip
    produced = {o for n in g.node for o in n.output}
    kept = [v for v in g.value_info if v.name in produced and v.name not in ("probs", "features", "malignancy")]
    del g.value_info[:]
    g.value_info.extend(kept)
    onnx.checker.check_model(m)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, str(out_path))
    # Grad-CAM sidecar: d(logit)/d(pooled block14) is the block14 slice of the folded weights (8 columns:
    # the 7 class logits, then the malignancy logit).
    start = sum(dims[: taps.index("block14")])
    w14 = wf[start : start + dims[taps.index("block14")]]
    np.savez(out_path.with_name(out_path.stem + ".head.npz"), linear_w_features=w14.astype(np.float32),
             linear_b=bf.astype(np.float32))  # fmt: skip
    return out_path


# --------------------------------------------------------------------------------------------------
# Evaluation on a split: the three data sets and their skin-type groups
# --------------------------------------------------------------------------------------------------

#: The gated questions: name -> (which rows, which score). Each one is computed on its own rows only.
QUESTIONS: dict[str, str] = {
    "isic_mel_vs_nv": "ISIC external, MEL vs NV, score p(mel)",
    "pad_fst_labelled": "PAD-UFES-20 images with a clinician FST, malignant vs rest, score malignancy",
    "fitz_malignant": "Fitzpatrick17k, malignant vs rest, score malignancy",
}


def question_rows(records: Sequence[Record], rows: Sequence[int]) -> dict[str, np.ndarray]:
    """Row indices (into ``records``) of each question, restricted to ``rows``."""
    out: dict[str, list[int]] = {q: [] for q in QUESTIONS}
    out["isic_malignancy"] = []
    out["fitz_malignant_vs_benign_neoplasm"] = []
    for i in rows:
        r = records[i]
        if r.dataset == "isic" and r.pool == "external":
            out["isic_malignancy"].append(i)
            if r.dx in ("MEL", "NV"):
                out["isic_mel_vs_nv"].append(i)
        elif r.dataset == "pad" and r.fst_source == "label":
            out["pad_fst_labelled"].append(i)
        elif r.dataset == "fitz":
            out["fitz_malignant"].append(i)
            if r.extra.get("three_partition") != "non-neoplastic":
                out["fitz_malignant_vs_benign_neoplasm"].append(i)
    return {k: np.asarray(v, np.int64) for k, v in out.items()}


def _score(question: str, probs: np.ndarray) -> np.ndarray:
    if question == "isic_mel_vs_nv":
        return probs[:, CLASSES.index("mel")]
    return probs[:, list(MAL_IDX)].sum(axis=1)


def _label(question: str, r: Record) -> int:
    return int(r.dx == "MEL") if question == "isic_mel_vs_nv" else int(r.malignant)


def evaluate(probs: np.ndarray, records: Sequence[Record], rows: Sequence[int], *, n_boot: int = 0,
             seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """AUROC (with a stratified-bootstrap 95% CI when ``n_boot``) of every question and of each DDI group.

    ``probs`` is aligned with ``records`` (rows outside ``rows`` are ignored). A group counts for the gap only when
    sufficient (n >= 30, >= 5 of each class); the gap is max - min over sufficient groups, NaN with fewer than two.
    """
    from mendicant_desktop.core.audit import auroc, bootstrap_metrics, is_sufficient, percentile_ci

    out: dict[str, Any] = {}
    for q, idx in question_rows(records, rows).items():
        y = np.array([_label(q, records[i]) for i in idx], np.int64)
        s = _score(q, probs[idx]).astype(np.float64)
        entry: dict[str, Any] = {"n": int(len(y)), "n_pos": int(y.sum()), "auroc": auroc(y, s) if len(y) else NAN}
        if n_boot and len(y) and 0 < y.sum() < len(y):
            reps = bootstrap_metrics(y, np.clip(s, 0, 1), 0.5, n_boot=n_boot, seed=seed, group=q)["auroc"]
            entry["auroc_ci95"] = list(percentile_ci(reps))
        groups: dict[str, Any] = {}
        if q in ("pad_fst_labelled", "fitz_malignant"):
            for gname in DDI_GROUPS:
                gm = np.array([ddi_group(records[i].fst) == gname for i in idx], bool)
                n, npos = int(gm.sum()), int(y[gm].sum())
                g = {"n": n, "n_pos": npos, "sufficient": bool(is_sufficient(n, npos)),
                     "auroc": auroc(y[gm], s[gm]) if n and 0 < npos < n else NAN}  # fmt: skip
                if n_boot and g["sufficient"]:
                    reps = bootstrap_metrics(y[gm], np.clip(s[gm], 0, 1), 0.5, n_boot=n_boot, seed=seed,
                                             group=f"{q}:{gname}")["auroc"]  # fmt: skip
                    g["auroc_ci95"] = list(percentile_ci(reps))
                groups[gname] = g
            vals = [g["auroc"] for g in groups.values() if g["sufficient"] and np.isfinite(g["auroc"])]
            entry["groups"] = groups
            entry["gap"] = float(max(vals) - min(vals)) if len(vals) >= 2 else NAN
        out[q] = entry
    return out


NAN = float("nan")


def selection_score(ev: dict[str, Any]) -> float:
    """Mean AUROC of the three gated questions (the select split's one number for choosing C)."""
    return float(np.mean([ev[q]["auroc"] for q in QUESTIONS]))


# --------------------------------------------------------------------------------------------------
# Built-in kernel-check inputs (synthetic: no data-set image may ship with the app)
# --------------------------------------------------------------------------------------------------


def synthetic_check_images(n: int = 6, size: int = MODEL_SIZE[0], seed: int = 20261201) -> np.ndarray:
    """``n`` lesion-like RGB uint8 images: a skin-toned, shaded background (light to dark), a textured,
    irregular brown-to-black blot, a few hairs and sensor noise. They drive the network's activations through
    the same ranges as real photos (bright skin, dark lesion, fine texture), which is what exposes saturating
    INT8 kernels; they are generated, never taken from a data set."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.uint8)
    skins = np.array([[236, 200, 180], [214, 170, 140], [190, 140, 105], [160, 110, 80], [120, 80, 55],
                      [85, 55, 40]], np.float32)  # fmt: skip
    for k in range(n):
        skin = skins[k % len(skins)] * (0.9 + 0.2 * rng.random())
        shade = 0.85 + 0.3 * (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1) + 1) / 2
        img = skin[None, None, :] * shade[..., None]
        cx, cy = rng.uniform(0.35, 0.65, 2)
        ang = np.arctan2(yy - cy, xx - cx)
        radius = rng.uniform(0.15, 0.3) * (1 + 0.25 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.1 * np.sin(7 * ang))
        d = np.hypot(xx - cx, yy - cy) / radius
        inside = np.clip(1.3 - d, 0, 1)
        texture = rng.normal(0, 1, (-(-size // 8), -(-size // 8))).astype(np.float32)
        texture = np.kron(texture, np.ones((8, 8), np.float32))[:size, :size]
        lesion = np.array([90, 55, 35], np.float32) * (0.6 + 0.4 * rng.random()) * (1 + 0.25 * texture[..., None])
        lesion *= (0.6 + 0.4 * d[..., None].clip(0, 1))
        img = img * (1 - inside[..., None]) + lesion * inside[..., None]
        for _ in range(int(rng.integers(0, 5))):
            a, b = rng.uniform(-2, 2), rng.uniform(0, 1)
            hair = np.abs(yy - (a * (xx - 0.5) + b)) < 0.004
            img[hair] = img[hair] * 0.25
        img += rng.normal(0, 4, img.shape)
        out[k] = np.clip(img, 0, 255).astype(np.uint8)
    return out


# --------------------------------------------------------------------------------------------------
# The stage: python -m compression adapt
# --------------------------------------------------------------------------------------------------

SPLIT_COLUMNS = ("index", "split", "dataset", "pool", "relpath", "sha256", "dx", "dx7", "malignant", "fst",
                 "fst_source", "group", "age", "sex", "site")  # fmt: skip


def write_split(path: Path, records: Sequence[Record], split: Sequence[str]) -> str:
    """The split manifest as CSV; returns :func:`manifest_sha256`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(SPLIT_COLUMNS)
        for i, (r, s) in enumerate(zip(records, split)):
            w.writerow([i, s, r.dataset, r.pool, r.relpath, r.sha256, r.dx, r.dx7, r.malignant, r.fst,
                        r.fst_source, r.patient_id, "" if r.age is None else r.age, r.sex, r.site])  # fmt: skip
    return manifest_sha256(records, split)


@dataclass
class SplitData:
    records: list[Record]
    split: list[str]
    sha256: str
    shared: Path

    def rows(self, name: str) -> np.ndarray:
        return np.array([i for i, s in enumerate(self.split) if s == name], np.int64)


def load_split(cfg: Any) -> SplitData:
    """Records of all three data sets with their content hashes and the configured three-way split."""
    from .data import shared_data_dir

    shared = shared_data_dir(cfg)
    records = read_all_records(shared)
    hash_records(records, shared)
    a = cfg.adapt
    split = three_way_split(records, select=a.select_fraction, gate=a.gate_fraction, seed=a.split_seed)
    return SplitData(records, split, manifest_sha256(records, split), shared)


def reference_fp32(log: Callable[[str], None] = print) -> Path:
    """The reference network in FP32 ONNX (built from the sklesion wheel into the cache when missing)."""
    from .validate import default_teacher

    path = default_teacher()
    if not path.is_file():
        from .export import export_reference_fp32

        log(f"adapt: exporting the reference network to {path}")
        export_reference_fp32(path)
    return path


def threshold_at_sensitivity(y: np.ndarray, s: np.ndarray, min_sensitivity: float) -> float:
    """The highest score threshold (score >= t is positive) whose sensitivity is at least ``min_sensitivity``."""
    pos = np.sort(s[y == 1])[::-1]
    k = int(np.ceil(min_sensitivity * len(pos))) - 1
    return float(pos[max(0, min(k, len(pos) - 1))])


def ort_probs(model: str | os.PathLike | bytes, records: Sequence[Record], rows: Sequence[int], shared: Path, *,
              threads: int = 2, batch: int = 8, blank_meta: bool = False) -> np.ndarray:  # fmt: skip
    """Probabilities of an ONNX model (inputs ``image``, ``meta``) on ``records[rows]``, decoded by the app's code."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    out = []
    rows = list(rows)
    for s in range(0, len(rows), batch):
        chunk = [records[i] for i in rows[s : s + batch]]
        x = np.stack([preprocess(load_image(shared / r.relpath), MODEL_SIZE) for r in chunk]).astype(np.float32)
        out.append(sess.run(["probs"], {"image": x, "meta": metadata_matrix(chunk, blank=blank_meta)})[0])
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def int8_agreement(p_fp32: np.ndarray, p_int8: np.ndarray, records: Sequence[Record], rows: Sequence[int]
                   ) -> dict[str, Any]:  # fmt: skip
    """INT8 against FP32 on the same rows: top-1, malignancy-rank Spearman, max |Δp|, ΔAUROC per question."""
    mal_f = p_fp32[:, list(MAL_IDX)].sum(1)
    mal_q = p_int8[:, list(MAL_IDX)].sum(1)
    full_f = np.zeros((len(records), p_fp32.shape[1]), np.float32)
    full_q = full_f.copy()
    full_f[list(rows)], full_q[list(rows)] = p_fp32, p_int8
    ev_f, ev_q = evaluate(full_f, records, rows), evaluate(full_q, records, rows)
    return {
        "n": int(len(rows)),
        "top1_agreement": float((p_fp32.argmax(1) == p_int8.argmax(1)).mean()),
        "malignancy_spearman": spearman(mal_f, mal_q),
        "max_abs_diff_probs": float(np.abs(p_fp32 - p_int8).max()),
        "max_abs_diff_malignancy": float(np.abs(mal_f - mal_q).max()),
        "delta_auroc": {q: float(ev_q[q]["auroc"] - ev_f[q]["auroc"]) for q in QUESTIONS},
    }


def _fit_select(cfg: Any, sd: SplitData, views: Sequence[np.ndarray], id_all: np.ndarray, dims: Sequence[int],
                log: Callable[[str], None]) -> tuple[LinearHeads, list[dict[str, Any]]]:  # fmt: skip
    """Fit on the train rows (one feature matrix per view), choose each head's C on select's mean AUROC:
    first the malignancy head's C (7-class C at the middle of its grid), then the 7-class head's."""
    a = cfg.adapt
    train, select = sd.rows("train"), sd.rows("select")
    X, M, R, W = training_rows(sd.records, train, views)
    meta_sel = metadata_matrix([sd.records[i] for i in select])
    full = np.zeros((len(sd.records), len(CLASSES)), np.float32)
    trials: list[dict[str, Any]] = []
    best: tuple[float, LinearHeads] | None = None
    c7_mid = a.c_classes[len(a.c_classes) // 2]
    for stage, grid in (("malignancy", a.c_malignancy), ("classes", a.c_classes)):
        for c in grid:
            cm = c if stage == "malignancy" else best[1].cm  # type: ignore[index]
            c7 = c7_mid if stage == "malignancy" else c
            if any(t["c_malignancy"] == cm and t["c_classes"] == c7 for t in trials):
                continue
            t0 = time.perf_counter()
            heads = fit_heads(X, M, R, W, c7=c7, cm=cm, taps=tuple(TAPS.values()), dims=dims, seed=cfg.run.seed)
            full[select] = heads.probs(id_all[select], meta_sel)
            ev = evaluate(full, sd.records, select)
            score = selection_score(ev)
            trials.append({"c_malignancy": cm, "c_classes": c7, "score": score, "seconds": time.perf_counter() - t0,
                           **{q: ev[q]["auroc"] for q in QUESTIONS}})  # fmt: skip
            log(f"adapt: C_mal={cm:g} C_7={c7:g}: select mean AUROC {score:.4f} "
                + " ".join(f"{q}={ev[q]['auroc']:.3f}" for q in QUESTIONS))  # fmt: skip
            if best is None or score > best[0]:
                best = (score, heads)
    assert best is not None
    return best[1], trials


def _adapt_cfg(cfg: Any) -> dict[str, Any]:
    import dataclasses

    return {k: v for k, v in dataclasses.asdict(cfg.adapt).items()
            if k in ("select_fraction", "gate_fraction", "split_seed", "train_views", "c_malignancy", "c_classes")}


def _fit_code_sha() -> str:
    import inspect

    srcs = [inspect.getsource(f) for f in (training_rows, seven_class_mask, fit_heads, _fit_select, _baselines,
                                           evaluate, three_way_split, _assign_groups)]  # fmt: skip
    return hashlib.sha256("\n".join(srcs).encode()).hexdigest()


def _save_fit(path: Path, key: str, heads: LinearHeads, trials: list[dict[str, Any]], baselines: dict[str, Any]) -> None:
    """The fitted heads and their selection record, so a stopped stage resumes without refitting."""
    meta = json.dumps({"trials": trials, "baselines": baselines, "taps": heads.taps, "dims": heads.dims,
                       "c7": heads.c7, "cm": heads.cm}, default=float)  # fmt: skip
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, key=key, meta=meta, mu=heads.mu, sd=heads.sd, w7=heads.w7, b7=heads.b7, wm=heads.wm,
             bm=np.array(heads.bm))  # fmt: skip
    tmp.replace(path)


def _load_fit(path: Path, key: str) -> tuple[LinearHeads, list[dict[str, Any]], dict[str, Any]] | None:
    if not path.is_file():
        return None
    with np.load(path) as z:
        if str(z["key"]) != key:
            return None
        meta = json.loads(str(z["meta"]))
        heads = LinearHeads(taps=tuple(meta["taps"]), dims=tuple(meta["dims"]), mu=z["mu"], sd=z["sd"], w7=z["w7"],
                            b7=z["b7"], wm=z["wm"], bm=float(z["bm"]), c7=meta["c7"], cm=meta["cm"])  # fmt: skip
    return heads, meta["trials"], meta["baselines"]


def adapt_done(run_dir: str | os.PathLike) -> bool:
    """The stage finished (its report is written last, after the ONNX files and the kernel check)."""
    d = Path(run_dir) / "adapt"
    return all((d / f).is_file() for f in ("adapt.json", "teacher_fp32.onnx", "teacher_int8.onnx",
                                             "teacher_int8.selfcheck.npz"))  # fmt: skip


def run_adapt(cfg: Any, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Split, features, heads (C on select), the FP32 teacher ONNX, its INT8 model, agreement, kernel check."""
    from .quantize import calibration_manifest, fst_balanced_selection, quantize_int8_static

    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    out = run_dir / "adapt"
    out.mkdir(parents=True, exist_ok=True)
    a = cfg.adapt
    sd = load_split(cfg)
    write_split(out / "split.csv", sd.records, sd.split)
    counts = {s: {d: int(sum(1 for r, x in zip(sd.records, sd.split) if x == s and r.dataset == d))
                  for d in ("isic", "pad", "fitz")} for s in SPLITS}  # fmt: skip
    log(f"adapt: split {sd.sha256[:12]}: {counts}")
    fp32 = reference_fp32(log)
    cache = Path(cfg.run_dir()).parent / "adapt-cache"
    fid = extract_features(fp32, sd.records, sd.shared, cache, view="id", threads=cfg.run.threads, log=log)
    id_all = fid.matrix()
    dims = [fid.pools[t].shape[1] for t in TAPS.values()]
    train = sd.rows("train")
    views = [id_all[train]]
    view_keys = []
    for v in a.train_views[1:]:
        fv = extract_features(fp32, sd.records, sd.shared, cache, view=v, rows=train, threads=cfg.run.threads,
                              log=log)  # fmt: skip
        views.append(fv.matrix())
        view_keys.append(fv.key)
    fit_key = hashlib.sha256(json.dumps({"features": [fid.key, *view_keys], "adapt": _adapt_cfg(cfg),
                                         "seed": cfg.run.seed, "code": _fit_code_sha()}, sort_keys=True,
                                        default=str).encode()).hexdigest()  # fmt: skip
    cached = _load_fit(out / "fit.npz", fit_key)
    if cached is not None:
        heads, trials, baselines = cached
        log(f"adapt: heads reused from {out / 'fit.npz'} (same features, config and code)")
    else:
        heads, trials = _fit_select(cfg, sd, views, id_all, dims, log)
        baselines = _baselines(cfg, sd, id_all, dims, heads, log)
        _save_fit(out / "fit.npz", fit_key, heads, trials, baselines)
    select = sd.rows("select")
    # INT8: FST-balanced calibration from the train split (clinician/annotator FST only; ISIC has none).
    fst = [r.fst if (r.fst_source == "label" and s == "train") else "unknown" for r, s in zip(sd.records, sd.split)]
    positions, per_group = fst_balanced_selection(fst, a.calibration_per_group, seed=cfg.run.seed)
    isic_train = [i for i in train if sd.records[i].dataset == "isic"]
    rng = _rng(cfg.run.seed, "calib-isic")
    isic_pick = sorted(rng.choice(isic_train, size=min(a.calibration_per_group * 2, len(isic_train)), replace=False))
    positions = np.concatenate([positions, np.asarray(isic_pick, np.int64)])
    # Mixed order: histogram calibration widens its bins batch by batch, and a first batch of only masked PAD crops
    # (black around the lesion) gives ranges so narrow that merging a later one needs millions of bins.
    positions = positions[_rng(cfg.run.seed, "calib-order").permutation(len(positions))]
    cal_imgs = np.stack([preprocess(load_image(sd.shared / sd.records[i].relpath), MODEL_SIZE)
                         for i in positions]).astype(np.float32)  # fmt: skip
    cal_meta = metadata_matrix([sd.records[i] for i in positions])

    def quantize(teacher: Path, imgs: np.ndarray) -> Path:
        return quantize_int8_static(teacher, out / "teacher_int8.onnx", imgs, cal_meta, list(range(len(positions))),
                                    method=a.method, per_channel=True, head_fp32=True, reduce_range=a.reduce_range,
                                    activation_type=a.activation_type, keep_fp32=a.keep_fp32, threads=cfg.run.threads,
                                    range_quantile=a.range_quantile, batch_size=8, log=log)  # fmt: skip

    int8_aware = None
    if a.int8_aware:
        # The backbone's INT8 ranges do not depend on the head (it stays FP32), so a provisional INT8 model gives the
        # pooled features the shipped one computes. Training the head on them too teaches it to ignore the
        # directions quantization disturbs: the FP32 counterpart and the INT8 model then agree.
        quantize(build_teacher_onnx(fp32, heads, out / "teacher_fp32.onnx"), cal_imgs)
        f8 = extract_features(out / "teacher_int8.onnx", sd.records, sd.shared, cache, view="id", rows=train,
                              graph=pool_model, threads=cfg.run.threads, log=log)  # fmt: skip
        key8 = hashlib.sha256(f"{fit_key}|{f8.key}".encode()).hexdigest()
        cached8 = _load_fit(out / "fit_int8_aware.npz", key8)
        if cached8 is not None:
            heads = cached8[0]
            log("adapt: INT8-aware heads reused")
        else:
            X, M, R, W = training_rows(sd.records, train, [*views, f8.matrix()])
            heads = fit_heads(X, M, R, W, c7=heads.c7, cm=heads.cm, taps=tuple(TAPS.values()), dims=dims,
                              seed=cfg.run.seed)  # fmt: skip
            del X, M, R, W
            _save_fit(out / "fit_int8_aware.npz", key8, heads, trials, baselines)
        int8_aware = {"int8_features_key": f8.key, "c_malignancy": heads.cm, "c_classes": heads.c7}
    del views
    p_sel = heads.probs(id_all[select], metadata_matrix([sd.records[i] for i in select]))
    ys = np.array([sd.records[i].malignant for i in select])
    in_q = np.isin(select, np.concatenate([question_rows(sd.records, select)[q] for q in
                                           ("isic_malignancy", "pad_fst_labelled", "fitz_malignant")]))  # fmt: skip
    threshold = threshold_at_sensitivity(ys[in_q], p_sel[in_q][:, list(MAL_IDX)].sum(1), a.min_sensitivity)
    teacher = build_teacher_onnx(fp32, heads, out / "teacher_fp32.onnx")
    # The ONNX graph must compute what the numpy heads compute.
    probe = select[:16]
    p_onnx = ort_probs(teacher, sd.records, probe, sd.shared, threads=cfg.run.threads)
    graft_err = float(np.abs(p_onnx - p_sel[:16]).max())
    if graft_err > 1e-3:
        raise RuntimeError(f"adapt: the ONNX teacher differs from the fitted heads by {graft_err:.2e}")
    log(f"adapt: teacher_fp32.onnx matches the heads (max |Δp| {graft_err:.1e}); threshold {threshold:.4f}")
    int8 = quantize(teacher, cal_imgs)
    del cal_imgs
    p_sel_q = ort_probs(int8, sd.records, select, sd.shared, threads=cfg.run.threads)
    p_sel_f = ort_probs(teacher, sd.records, select, sd.shared, threads=cfg.run.threads)
    agree = int8_agreement(p_sel_f, p_sel_q, sd.records, select)
    log(f"adapt: INT8 vs FP32 on select (n={agree['n']}): top-1 {agree['top1_agreement']:.4f}, Spearman "
        f"{agree['malignancy_spearman']:.4f}, ΔAUROC {agree['delta_auroc']}")  # fmt: skip
    check = write_kernel_check(int8, teacher, out / "teacher_int8.selfcheck.npz", n=a.check_inputs,
                               floor=a.check_tolerance_floor)  # fmt: skip
    full_sel = np.zeros((len(sd.records), len(CLASSES)), np.float32)
    full_sel[select] = p_sel_f
    report = {
        "split": {"sha256": sd.sha256, "counts": counts, "seed": a.split_seed,
                  "fractions": {"select": a.select_fraction, "gate": a.gate_fraction}},
        "features": {"taps": TAPS, "dims": dims, "views": list(a.train_views), "key_id": fid.key,
                     "reference_fp32_sha256": hashlib.sha256(fp32.read_bytes()).hexdigest()},
        "heads": {"c_malignancy": heads.cm, "c_classes": heads.c7, "trials": trials, "int8_aware": int8_aware},
        "threshold": {"value": threshold, "rule": f"highest malignancy threshold with sensitivity >= "
                      f"{a.min_sensitivity} on the select split (ISIC external, PAD FST-labelled, Fitzpatrick17k)"},
        "select_fp32": evaluate(full_sel, sd.records, select),
        "select_baselines": baselines,
        "calibration": {"n": int(len(positions)), "per_group": per_group, "isic": len(isic_pick),
                        **calibration_manifest([sd.records[i].relpath for i in positions],
                                               [sd.records[i].sha256 for i in positions])},
        "calibration_rows": [int(i) for i in positions],
        "int8": {"file": int8.name, "sha256": hashlib.sha256(int8.read_bytes()).hexdigest(),
                 "reduce_range": a.reduce_range, "activation_type": a.activation_type, "method": a.method,
                 "range_quantile": a.range_quantile,
                 "keep_fp32": list(a.keep_fp32), "agreement_select": agree},
        "fp32": {"file": teacher.name, "sha256": hashlib.sha256(teacher.read_bytes()).hexdigest()},
        "kernel_check": check,
        "cpu": cpu_features(),
        "libraries": library_versions(),
        "seconds": time.perf_counter() - t_start,
    }
    (out / "adapt.json").write_text(json.dumps(report, indent=1, default=float), encoding="utf-8")
    log(f"adapt: done in {report['seconds']:.0f} s -> {out}")
    return report


def _baselines(cfg: Any, sd: SplitData, id_all: np.ndarray, dims: Sequence[int], heads: LinearHeads,
               log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    """What the adapted teacher must beat on select: the reference network's own head (on the same pooled block14
    features it consumes) and the plain block14 logistic regression (identity view, same C)."""
    from mendicant_desktop.core.saliency import head_forward, softmax

    from .validate import default_teacher

    select, train = sd.rows("select"), sd.rows("train")
    meta_sel = metadata_matrix([sd.records[i] for i in select])
    start = sum(dims[:-1])
    b14 = id_all[:, start:]
    with np.load(default_teacher().with_name("reference_fp32.head.npz")) as z:
        ref_head = {k: z[k].astype(np.float32) for k in z.files}
    full = np.zeros((len(sd.records), len(CLASSES)), np.float32)
    full[select] = softmax(head_forward(ref_head, b14[select], meta_sel).logits)
    out = {"reference_head": evaluate(full, sd.records, select)}
    X, M, R, W = training_rows(sd.records, train, [b14[train]])
    lr = fit_heads(X, M, R, W, c7=heads.c7, cm=heads.cm, taps=("block14",), dims=(b14.shape[1],), seed=cfg.run.seed)
    full[select] = lr.probs(b14[select], meta_sel)
    out["block14_logistic_regression"] = evaluate(full, sd.records, select)
    for k, ev in out.items():
        log(f"adapt: baseline {k} on select: " + " ".join(f"{q}={ev[q]['auroc']:.3f}" for q in QUESTIONS))
    return out


#: Max |Δp| allowed between this CPU's INT8 outputs and the build machine's on the check inputs. With 7-bit weights
#: the integer arithmetic cannot saturate, but the FP32 stem (``keep_fp32 = ["stem"]``) differs in the last bits
#: between CPUs' FP32 kernels and a rounding step downstream can amplify that: under QEMU ``-cpu Haswell`` the
#: adapted-4 INT8 model differed from the native (VNNI) outputs by up to 0.043 (6 gate images, 6 check inputs), where 8-bit weights
#: (saturating) differed by 0.96 (``benchmarks/results/int8_cpu_emulation.json``).
INT8_IDENTITY_TOLERANCE = 0.1


def write_kernel_check(int8: Path, fp32: Path, path: Path, *, n: int, floor: float) -> dict[str, Any]:
    """The built-in check inputs beside the model: synthetic images, blank metadata, two sets of probabilities.

    - ``probs_reference``: the FP32 counterpart's. Tolerance: the larger of ``floor`` and three times this build
      machine's INT8-vs-FP32 difference (synthetic inputs are far from the calibration images, so INT8 differs more
      on them than on real images);
    - ``probs_int8_build``: the INT8 model's on this build machine, whose kernels are exact. Tolerance
      :data:`INT8_IDENTITY_TOLERANCE`: this is the check that catches a CPU whose kernels compute differently.
    """
    import onnxruntime as ort

    x = synthetic_check_images(n)
    meta = np.repeat(encode_metadata(None)[None], n, axis=0).astype(np.float32)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    p_f = ort.InferenceSession(str(fp32), so, providers=["CPUExecutionProvider"]).run(
        ["probs"], {"image": x.astype(np.float32), "meta": meta})[0]
    p_q = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"]).run(
        ["probs"], {"image": x.astype(np.float32), "meta": meta})[0]
    diff = float(np.abs(p_f - p_q).max())
    tol = float(min(0.99, max(floor, 3 * diff)))
    np.savez_compressed(path, image=x, meta=meta, probs_reference=p_f.astype(np.float32),
                        probs_int8_build=p_q.astype(np.float32))  # fmt: skip
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "tolerance": tol,
            "int8_tolerance": INT8_IDENTITY_TOLERANCE, "usable": True,
            "n": n, "build_max_abs_diff": diff, "reference": "FP32 counterpart",
            "int8_reference": f"the INT8 model on the build machine ({', '.join(_cpu_flags())})",
            "inputs": "synthetic lesion-like images (compression.adapt.synthetic_check_images), blank metadata"}


def _cpu_flags() -> list[str]:
    f = cpu_features()
    return [k for k in ("AVX2", "AVX512F", "AVX512VNNI", "VNNI") if f.get(k)] or ["no AVX2"]
