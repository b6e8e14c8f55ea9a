"""Quantization stage: INT8 static QDQ (the shipped format), plus FP16 and INT8-dynamic comparison variants.

Static INT8 uses ONNX Runtime's own tooling (:func:`onnxruntime.quantization.quant_pre_process` for shape
inference, :func:`onnxruntime.quantization.quantize_static` with a :class:`CalibrationDataReader`):

- QDQ format, per-channel symmetric INT8 weights, asymmetric UINT8 activations (U8S8, ORT's fast x86 path);
- the head (every node whose name starts with ``/head/``, i.e. the metadata branch and the MLP) and the
  Softmax stay FP32, and so does the global average pool feeding the head, which reads the dequantized
  feature map (the backbone's last activation, also the ``features`` output); :func:`head_violations`
  checks the result structurally (no QuantizeLinear/DequantizeLinear touches a head node, the head's
  weights are float) and :func:`probs_stepped` checks that probabilities are not stepped in 1/255 or 1/256;
- calibration on real images only, FST-balanced (:func:`fst_balanced_selection`): the same number of
  images from every Fitzpatrick group I-VI (as many as exist if fewer), the rare groups V-VI taken twice.

FP16 (:func:`convert_fp16`, ``onnxruntime.transformers.float16``, float32 IO kept) and INT8 dynamic
(:func:`quantize_dynamic_int8`) are only produced for the comparison table; dynamic quantization turns
every Conv into ConvInteger with run-time activation ranges, which is several times slower than FP32 on
this CNN in ONNX Runtime's CPU provider.

Pure agreement measures used by the card and the gate: :func:`top1_agreement`, :func:`max_abs_diff`,
:func:`sqnr_db`.

Pipeline use: ``python -m compression quantize`` (``run_stage``) exports the fine-tuned student
(``<run>/train/student.pt``) to FP32 ONNX and writes ``<run>/quantize/student_{int8,fp16,int8_dynamic}.onnx``
with their head sidecars and ``<run>/quantize/quantize.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FST_GROUPS",
    "RARE_GROUPS",
    "HEAD_PREFIX",
    "CALIBRATION_METHODS",
    "fst_balanced_selection",
    "ArrayCalibrationReader",
    "head_nodes",
    "nodes_to_exclude",
    "head_violations",
    "probs_stepped",
    "quantize_int8_static",
    "equalize_separable",
    "quantize_dynamic_int8",
    "convert_fp16",
    "copy_head_sidecar",
    "compare_variants",
    "ort_session",
    "run_model",
    "top1_agreement",
    "max_abs_diff",
    "sqnr_db",
    "agreement",
    "calibration_manifest",
    "calibration_positions",
    "run_stage",
    "main",
]

FST_GROUPS: tuple[str, ...] = ("I", "II", "III", "IV", "V", "VI")
RARE_GROUPS: tuple[str, ...] = ("V", "VI")
HEAD_PREFIX = "/head/"
#: Op types that belong to the head wherever they sit (the exporter names the Softmax ``/Softmax``).
HEAD_OP_TYPES: tuple[str, ...] = ("Softmax",)
#: Ops outside the head that are excluded from quantization too: the global average pool feeding the head
#: (it reads the dequantized feature map, the backbone's last activation, and pools it in FP32).
POOL_OP_TYPES: tuple[str, ...] = ("ReduceMean", "GlobalAveragePool")
CALIBRATION_METHODS: tuple[str, ...] = ("minmax", "percentile", "entropy")
Q_OPS = ("QuantizeLinear", "DequantizeLinear")


# --------------------------------------------------------------------------------------------------
# Pure agreement measures
# --------------------------------------------------------------------------------------------------


def top1_agreement(p_ref: Any, p_q: Any) -> float:
    """Share of rows whose arg-max class is the same in both probability matrices (N, K)."""
    a, b = np.asarray(p_ref), np.asarray(p_q)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"expected two (N, K) arrays of equal shape, got {a.shape} and {b.shape}")
    if a.shape[0] == 0:
        raise ValueError("no rows to compare")
    return float(np.mean(a.argmax(axis=1) == b.argmax(axis=1)))


def max_abs_diff(a: Any, b: Any) -> float:
    """max |a - b| over all elements (arrays of equal shape)."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    return float(np.max(np.abs(x - y))) if x.size else 0.0


def sqnr_db(ref: Any, test: Any) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB.

    ``inf`` when the arrays are identical (no noise); ``-inf`` when the reference is all zeros but the test
    is not.
    """
    r, t = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    if r.shape != t.shape:
        raise ValueError(f"shapes differ: {r.shape} vs {t.shape}")
    signal = float(np.sum(r * r))
    noise = float(np.sum((r - t) ** 2))
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * float(np.log10(signal / noise))


def agreement(p_ref: np.ndarray, p_q: np.ndarray, *, f_signal: float | None = None,
              f_noise: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The card's FP32-vs-quantized agreement block (probabilities; optional feature-map SQNR sums)."""
    out: dict[str, Any] = {
        "n": int(len(p_ref)),
        "top1_agreement": top1_agreement(p_ref, p_q),
        "max_abs_diff_probs": max_abs_diff(p_ref, p_q),
        "mean_abs_diff_probs": float(np.mean(np.abs(np.asarray(p_ref, np.float64) - p_q))),
        "sqnr_db_probs": sqnr_db(p_ref, p_q),
    }
    if f_signal is not None and f_noise is not None:
        if f_noise == 0:
            out["sqnr_db_features"] = float("inf")
        elif f_signal == 0:
            out["sqnr_db_features"] = float("-inf")
        else:
            out["sqnr_db_features"] = 10.0 * float(np.log10(f_signal / f_noise))
    return out


# --------------------------------------------------------------------------------------------------
# Calibration set
# --------------------------------------------------------------------------------------------------


def fst_balanced_selection(
    fst: Sequence[str],
    per_group: int,
    *,
    rare_repeat: int = 2,
    rare_groups: Sequence[str] = RARE_GROUPS,
    groups: Sequence[str] = FST_GROUPS,
    seed: int = 0,
    eligible: Sequence[bool] | None = None,
) -> tuple[np.ndarray, dict[str, dict[str, int]]]:
    """Positions of an FST-balanced calibration set.

    Every group in ``groups`` contributes ``min(per_group, available)`` distinct items, drawn with a seeded
    permutation; the items of ``rare_groups`` are then taken ``rare_repeat`` times. Items whose FST is
    not in ``groups`` (e.g. ``"unknown"``) are never drawn. Returns ``(positions, counts)`` where ``counts``
    maps each group to ``{"available", "distinct", "taken"}``; positions are ordered by group, repeats last.
    """
    if per_group < 1:
        raise ValueError(f"per_group must be >= 1, got {per_group}")
    if rare_repeat < 1:
        raise ValueError(f"rare_repeat must be >= 1, got {rare_repeat}")
    fst_arr = np.asarray([str(f) for f in fst], dtype=object)
    ok = np.ones(len(fst_arr), bool) if eligible is None else np.asarray(eligible, bool)
    if ok.shape != fst_arr.shape:
        raise ValueError("eligible must have one entry per item")
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    repeats: list[int] = []
    counts: dict[str, dict[str, int]] = {}
    for g in groups:
        idx = np.flatnonzero((fst_arr == g) & ok)
        take = idx[rng.permutation(len(idx))[: min(per_group, len(idx))]]
        take = np.sort(take)
        reps = rare_repeat if g in rare_groups else 1
        picked.extend(int(i) for i in take)
        for _ in range(reps - 1):
            repeats.extend(int(i) for i in take)
        counts[g] = {"available": int(len(idx)), "distinct": int(len(take)), "taken": int(len(take) * reps)}
    return np.asarray(picked + repeats, np.int64), counts


def calibration_manifest(names: Sequence[str], sha256s: Sequence[str]) -> dict[str, Any]:
    """``{"n", "n_distinct", "sha256_of_manifest", "images": [[name, sha256], ...]}`` (order kept)."""
    lines = [f"{n}  {h}" for n, h in zip(names, sha256s, strict=True)]
    digest = hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()
    return {"n": len(lines), "n_distinct": len(set(names)), "sha256_of_manifest": digest,
            "images": [[n, h] for n, h in zip(names, sha256s, strict=True)]}  # fmt: skip


def _calibration_reader_base() -> type:
    from onnxruntime.quantization import CalibrationDataReader

    return CalibrationDataReader


class ArrayCalibrationReader(_calibration_reader_base()):  # type: ignore[misc]
    """ORT ``CalibrationDataReader`` over preprocessed images (N,254,254,3 float32 0..255) and metadata (N,10).

    Yields batches of ``batch_size`` rows of ``positions`` (in order). Implements ``__len__`` and
    ``set_range`` (in batches) so ``quantize_static(..., extra_options={"CalibStridedMinMax": k})`` can
    collect statistics ``k`` batches at a time, which keeps the histogram calibrators' memory bounded.
    """

    def __init__(self, images: Any, meta: Any, positions: Sequence[int] | None = None, *,
                 batch_size: int = 4) -> None:  # fmt: skip
        self.images = images
        self.meta = meta
        self.positions = np.arange(len(images)) if positions is None else np.asarray(positions, np.int64)
        self.batch_size = max(1, int(batch_size))
        self.batches = [self.positions[i : i + self.batch_size]
                        for i in range(0, len(self.positions), self.batch_size)]  # fmt: skip
        self.set_range(0, len(self.batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.batches[start_index:end_index])

    def rewind(self) -> None:
        self.set_range(0, len(self.batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        pos = next(self._it, None)
        if pos is None:
            return None
        img = np.stack([np.asarray(self.images[int(i)], np.float32) for i in pos])
        meta = np.stack([np.asarray(self.meta[int(i)], np.float32) for i in pos])
        return {"image": np.ascontiguousarray(img), "meta": np.ascontiguousarray(meta)}


# --------------------------------------------------------------------------------------------------
# Graph checks
# --------------------------------------------------------------------------------------------------


def _load(model: Any) -> Any:
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def head_nodes(model: Any, prefix: str = HEAD_PREFIX) -> list[Any]:
    """The head: nodes whose names start with ``prefix`` (metadata branch, MLP) and the Softmax."""
    m = _load(model)
    return [n for n in m.graph.node if n.name.startswith(prefix) or n.op_type in HEAD_OP_TYPES]


def nodes_to_exclude(model: Any, prefix: str = HEAD_PREFIX) -> list[str]:
    """Names of :func:`head_nodes` and the pooling feeding the head (for ``nodes_to_exclude``); raises if
    none is under ``prefix`` (a graph without module-scoped names cannot be quantized safely this way)."""
    m = _load(model)
    names = [n.name for n in head_nodes(m, prefix)] + [n.name for n in m.graph.node if n.op_type in POOL_OP_TYPES]
    if not any(n.startswith(prefix) for n in names):
        raise ValueError(f"no node named {prefix}*: export the model with compression.export (module-scoped names)")
    return names


def head_violations(model: Any, prefix: str = HEAD_PREFIX) -> list[str]:
    """Reasons the head is not pure FP32 (empty list = fine).

    Checks every :func:`head_nodes` node: no input produced by a DequantizeLinear (or any Q/DQ; except a pooling
    node reading a dequantized backbone activation, where the head begins), no output
    consumed by a QuantizeLinear, no integer-typed weight initializer, and no Q/DQ node named under
    ``prefix``.
    """
    import onnx

    m = _load(model)
    producer = {o: n for n in m.graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in m.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    inits = {t.name: t for t in m.graph.initializer}
    out: list[str] = []
    for n in head_nodes(m, prefix):
        for i in n.input:
            p = producer.get(i)
            # The head starts where a pooling node reads a dequantized backbone activation and pools it in FP32.
            entry = n.op_type in POOL_OP_TYPES and p is not None and p.op_type == "DequantizeLinear"
            if p is not None and p.op_type in Q_OPS and not entry:
                out.append(f"{n.name} ({n.op_type}) reads {i!r} from {p.op_type} {p.name}")
            if i in inits and inits[i].data_type != onnx.TensorProto.FLOAT and n.op_type in ("Gemm", "MatMul"):
                out.append(f"{n.name} weight {i!r} is not float32")
        for o in n.output:
            for c in consumers.get(o, []):
                if c.op_type in Q_OPS:
                    out.append(f"{n.name} ({n.op_type}) output {o!r} feeds {c.op_type} {c.name}")
    for n in m.graph.node:
        if n.op_type in Q_OPS and n.name.startswith(prefix):
            out.append(f"{n.op_type} {n.name} sits in the head")
    return out


def probs_stepped(probs: Any, steps: Sequence[int] = (255, 256), tol: float = 1e-6) -> bool:
    """True when every probability is a multiple of ``1/s`` for one of ``steps`` (a quantized Softmax)."""
    p = np.asarray(probs, np.float64).ravel()
    return any(bool(np.all(np.abs(p * s - np.round(p * s)) <= tol * s)) for s in steps)


# --------------------------------------------------------------------------------------------------
# ONNX Runtime helpers
# --------------------------------------------------------------------------------------------------


def ort_session(path: str | os.PathLike | bytes, threads: int = 2, *, spinning: bool = False) -> Any:
    """A CPU InferenceSession with ``threads`` intra-op threads, one inter-op thread, spinning off."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, int(threads))
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    src = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_model(
    sess: Any,
    images: Any,
    meta: Any,
    positions: Sequence[int] | None = None,
    *,
    batch_size: int = 8,
    on_batch: Callable[[np.ndarray, np.ndarray, np.ndarray], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Probabilities (N,7) of ``sess`` on ``images[positions]``; ``on_batch(pos, probs, features)`` sees
    every batch's feature maps (e.g. to accumulate a feature SQNR without keeping them)."""
    pos_all = np.arange(len(images)) if positions is None else np.asarray(positions, np.int64)
    out = np.zeros((len(pos_all), 7), np.float32)
    t0 = time.time()
    for a in range(0, len(pos_all), batch_size):
        pos = pos_all[a : a + batch_size]
        x = np.ascontiguousarray(np.stack([np.asarray(images[int(i)], np.float32) for i in pos]))
        m = np.ascontiguousarray(np.stack([np.asarray(meta[int(i)], np.float32) for i in pos]))
        probs, feats = sess.run(["probs", "features"], {"image": x, "meta": m})
        out[a : a + len(pos)] = probs
        if on_batch is not None:
            on_batch(pos, probs, feats)
        if log is not None and (a // batch_size) % 50 == 49:
            log(f"  scored {a + len(pos)}/{len(pos_all)} ({time.time() - t0:.0f}s)")
    return out


# --------------------------------------------------------------------------------------------------
# Quantizers
# --------------------------------------------------------------------------------------------------


def copy_head_sidecar(src_onnx: str | os.PathLike, dst_onnx: str | os.PathLike) -> Path | None:
    """Copy ``<src>.head.npz`` beside ``dst`` as ``<dst>.head.npz`` (the app verifies its sha256)."""
    from .export import head_npz_path

    src, dst = head_npz_path(src_onnx), head_npz_path(dst_onnx)
    if not src.is_file():
        return None
    if src.resolve() != dst.resolve():
        shutil.copyfile(src, dst)
    return dst


def _method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    table = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
             "entropy": CalibrationMethod.Entropy}  # fmt: skip
    if name not in table:
        raise ValueError(f"calibration method must be one of {', '.join(table)}, got {name!r}")
    return table[name]


def _save_atomic(write: Callable[[Path], None], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path


def _toposort(graph: Any) -> None:
    """Reorder ``graph.node`` topologically in place (converters may append producers at the end)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending = list(graph.node)
    ordered: list[Any] = []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ValueError("graph has a cycle or an undefined input: " + ", ".join(n.name for n in rest[:3]))
        pending = rest
    copies = [type(n)() for n in ordered]
    for c, n in zip(copies, ordered, strict=True):
        c.CopyFrom(n)
    del graph.node[:]
    graph.node.extend(copies)


def _finalize(path: Path, props: dict[str, str]) -> None:
    """Add metadata properties and re-save (single file, checked)."""
    import onnx

    m = onnx.load(str(path))
    existing = {p.key: p for p in m.metadata_props}
    for k, v in props.items():
        if k in existing:
            existing[k].value = v
        else:
            m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, str(path))


def _separable_pairs(m: Any) -> tuple[list[tuple[Any, Any]], list[tuple[Any, Any, Any]]]:
    """Equalizable pairs of a graph: (depthwise Conv without bias -> 1x1 Conv) and (1x1 Conv with bias -> Relu ->
    depthwise Conv), each link consumed by exactly one node."""
    cons: dict[str, list[Any]] = {}
    for n in m.graph.node:
        for i in n.input:
            cons.setdefault(i, []).append(n)
    init = {t.name: t for t in m.graph.initializer}

    def is_dw(n: Any) -> bool:
        w = init.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        g = [a.i for a in n.attribute if a.name == "group"]
        return w is not None and bool(g) and g[0] == w.dims[0] and g[0] > 1 and w.dims[1] == 1

    def is_pw(n: Any) -> bool:
        w = init.get(n.input[1]) if n.op_type == "Conv" and len(n.input) > 1 else None
        g = [a.i for a in n.attribute if a.name == "group"]
        return w is not None and list(w.dims[2:]) == [1, 1] and (not g or g[0] == 1)

    dw_pw, pw_relu_dw = [], []
    for n in m.graph.node:
        c = cons.get(n.output[0], []) if n.output else []
        if is_dw(n) and len(n.input) == 2 and len(c) == 1 and is_pw(c[0]):
            dw_pw.append((n, c[0]))
        if is_pw(n) and len(n.input) == 3 and len(c) == 1 and c[0].op_type == "Relu":
            c2 = cons.get(c[0].output[0], [])
            if len(c2) == 1 and is_dw(c2[0]) and len(c2[0].input) == 2:
                pw_relu_dw.append((n, c[0], c2[0]))
    return dw_pw, pw_relu_dw


def _channel_ranges(model: Any, tensors: Sequence[str], images: Any, meta: Any, positions: Sequence[int],
                    threads: int) -> dict[str, np.ndarray]:  # fmt: skip
    """max |x| per channel (axis 1) of ``tensors`` over the calibration images."""
    import onnx
    import onnxruntime as ort

    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    for t in tensors:
        aug.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(aug.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out: dict[str, np.ndarray] = {}
    reader = ArrayCalibrationReader(images, meta, positions, batch_size=8)
    while (feed := reader.get_next()) is not None:
        for t, a in zip(tensors, sess.run(list(tensors), feed), strict=True):
            r = np.abs(a).max(axis=tuple(i for i in range(a.ndim) if i != 1))
            out[t] = r if t not in out else np.maximum(out[t], r)
    return out


def equalize_separable(fp32_path: str | os.PathLike, out_path: str | os.PathLike, images: Any, meta: Any,
                       positions: Sequence[int], *, alpha: float = 0.5, threads: int = 2) -> dict[str, Any]:  # fmt: skip
    """Cross-layer equalization of the depthwise-separable convolutions before static INT8 (FP32 output unchanged).

    Static INT8 quantizes each activation per tensor, so in a depthwise-separable network a channel whose range is
    a hundredth of its neighbours' is rounded to a few levels (Nagel et al. 2019, "Data-free quantization"). Two
    exact rescalings move range between channels without changing the function:

    * depthwise Conv (no bias) -> 1x1 Conv: depthwise filter c divided by s_c, the 1x1 Conv's input column c
      multiplied by s_c (linear in between);
    * 1x1 Conv (+bias, BN folded) -> Relu -> depthwise Conv: output row c and bias c divided by s_c, the
      depthwise filter c multiplied by s_c (ReLU is positively homogeneous, s_c > 0).

    ``s_c = (r_c / max_c r_c) ** alpha`` from the per-channel ranges ``r_c`` on the (real, FST-balanced)
    calibration images: alpha 0 changes nothing, 1 makes every channel's range equal. Returns counts.
    """
    import onnx
    from onnx import numpy_helper

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    m = onnx.load(str(fp32_path))
    init = {t.name: t for t in m.graph.initializer}

    def get(k: str) -> np.ndarray:
        return numpy_helper.to_array(init[k]).astype(np.float32)

    def put(k: str, v: np.ndarray) -> None:
        init[k].CopyFrom(numpy_helper.from_array(v.astype(np.float32), k))

    def scale(r: np.ndarray) -> np.ndarray:
        r = np.maximum(r.astype(np.float64), 1e-8)
        return ((r / r.max()) ** alpha).astype(np.float32)

    dw_pw, pw_relu_dw = _separable_pairs(m)
    # One calibration pass: the depthwise outputs do not change under the first rescaling (the depthwise filter
    # multiplies back what the 1x1 Conv divided, through a positively homogeneous ReLU).
    tensors = [relu.output[0] for _, relu, _ in pw_relu_dw] + [dw.output[0] for dw, _ in dw_pw]
    if alpha > 0 and tensors:
        rng = _channel_ranges(m, tensors, images, meta, positions, threads)
        for pw, relu, dw in pw_relu_dw:
            s = scale(rng[relu.output[0]])
            put(pw.input[1], get(pw.input[1]) / s[:, None, None, None])
            put(pw.input[2], get(pw.input[2]) / s)
            put(dw.input[1], get(dw.input[1]) * s[:, None, None, None])
        for dw, pw in dw_pw:
            s = scale(rng[dw.output[0]])
            put(dw.input[1], get(dw.input[1]) / s[:, None, None, None])
            put(pw.input[1], get(pw.input[1]) * s[None, :, None, None])
    onnx.save(m, str(out_path))
    return {"alpha": alpha, "depthwise_pointwise": len(dw_pw), "pointwise_relu_depthwise": len(pw_relu_dw)}


def image_quantile_ranges(model_path: str | os.PathLike, images: Any, meta: Any, positions: Sequence[int], *,
                          quantile: float, skip: Sequence[str] = (), threads: int = 2,
                          batch_size: int = 1) -> dict[str, tuple[float, float]]:  # fmt: skip
    """Activation ranges robust to a few extreme images: per image the min and max of every float tensor, then the
    ``1 - quantile`` quantile of the minima and the ``quantile`` quantile of the maxima over the images.

    Why: ONNX Runtime's percentile calibration pools every element of every image into one histogram, so a handful
    of images whose middle-flow activations lie far above the usual range (masked crops, some clinical photos) fill
    the top 0.001% and set the range: the other images are then rounded to a few levels. Here an image counts once
    per tensor whatever its size, so ``quantile`` 0.75 lets the most extreme quarter of images clip.
    ``benchmarks/int8_variants.py`` (``docs/int8_variants.md``) measures both against the FP32 counterpart.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper

    if not 0.5 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0.5, 1], got {quantile}")
    m = onnx.load(str(model_path))
    skip_set = set(skip)
    inits = {t.name for t in m.graph.initializer}
    names = [i.name for i in m.graph.input if i.name == "image"]
    for n in m.graph.node:
        if n.name in skip_set or n.op_type in ("Shape", "Constant"):
            continue
        names += [o for o in n.output if o and o not in inits]
    have = {o.name for o in m.graph.output}
    for t in names:
        if t not in have:
            m.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every named tensor must exist
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    float_names = [o.name for o in sess.get_outputs() if o.name in set(names) and o.type == "tensor(float)"]
    lo: dict[str, list[np.ndarray]] = {t: [] for t in float_names}
    hi: dict[str, list[np.ndarray]] = {t: [] for t in float_names}
    pos = list(positions)
    for s in range(0, len(pos), batch_size):
        idx = pos[s : s + batch_size]
        x = np.stack([np.asarray(images[int(i)], np.float32) for i in idx])
        mm = np.stack([np.asarray(meta[int(i)], np.float32) for i in idx])
        outs = sess.run(float_names, {"image": x, "meta": mm})
        for t, a in zip(float_names, outs):
            a = np.asarray(a)
            if a.ndim == 0 or a.shape[0] != len(idx):
                continue
            flat = a.reshape(len(idx), -1)
            lo[t].append(flat.min(axis=1))
            hi[t].append(flat.max(axis=1))
    out: dict[str, tuple[float, float]] = {}
    for t in float_names:
        if not lo[t]:
            continue
        mins, maxs = np.concatenate(lo[t]), np.concatenate(hi[t])
        out[t] = (min(0.0, float(np.quantile(mins, 1.0 - quantile))), max(0.0, float(np.quantile(maxs, quantile))))
    return out


def quantize_int8_static(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    images: Any,
    meta: Any,
    positions: Sequence[int],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    head_fp32: bool = True,
    batch_size: int = 4,
    stride: int = 1,
    percentile: float = 99.999,
    equalize: float = 0.0,
    threads: int = 2,
    reduce_range: bool = False,
    activation_type: str = "uint8",
    keep_fp32: Sequence[str] = (),
    range_quantile: float = 0.0,
    log: Callable[[str], None] | None = None,
) -> Path:
    """INT8 static QDQ of ``fp32_path`` calibrated on ``images[positions]`` (real, preprocessed images).

    ``method`` "image_quantile" takes every activation range from :func:`image_quantile_ranges` (``range_quantile``,
    default 0.9) instead of ONNX Runtime's calibrators.

    Writes ``out_path`` and copies the FP32 head sidecar beside it. Raises if the head is not FP32 after
    quantization (when ``head_fp32``). ``equalize`` > 0 first applies :func:`equalize_separable` with that
    alpha (same calibration images).

    ``reduce_range`` quantizes weights to 7 bits: ONNX Runtime's U8S8 kernels on x86 without VNNI (AVX2, plain
    AVX-512) add pairs of u8 x s8 products in int16 and saturate; with |w| <= 64 a pair sum stays below 2^15, so
    the result is exact, and identical, on every x86 CPU. ``activation_type`` "uint8" (U8S8) or "int8" (S8S8).
    ``keep_fp32``: extra node groups left in FP32: ``"depthwise"`` (every depthwise Conv) or node names.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="mendicant-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        src = fp32_path
        eq_info = None
        if equalize > 0:
            src = Path(tmp) / "equalized.onnx"
            eq_info = equalize_separable(fp32_path, src, images, meta, positions, alpha=equalize, threads=threads)
        # The export is already BN-folded and slimmed: only (symbolic) shape inference is needed here.
        quant_pre_process(str(src), str(pre), skip_optimization=True, skip_onnx_shape=False,
                          skip_symbolic_shape=False)  # fmt: skip
        exclude = nodes_to_exclude(pre) if head_fp32 else []
        exclude += [n for n in _keep_fp32_nodes(pre, keep_fp32) if n not in exclude]
        reader = ArrayCalibrationReader(images, meta, positions, batch_size=batch_size)
        # One batch per collect step unless told otherwise: bounded memory for the histogram calibrators, and
        # ORT's entropy collector cannot stack a short last batch with a full one in the same step.
        stride = max(1, min(int(stride), len(reader)))
        while len(reader) % stride or (len(positions) % batch_size and stride > 1):
            stride -= 1
        if method == "image_quantile":
            q = range_quantile or 0.9
            # One image at a time: every activation of the network is an output of this pass.
            ranges = image_quantile_ranges(pre, images, meta, positions, quantile=q, skip=exclude, threads=threads,
                                           batch_size=1)  # fmt: skip
            overrides = {t: [{"rmin": np.float32(a), "rmax": np.float32(b)}] for t, (a, b) in ranges.items()}
        extra = {
            "ActivationSymmetric": False,
            "WeightSymmetric": True,
            "CalibStridedMinMax": stride,
            "CalibPercentile": float(percentile),
            "CalibTensorRangeSymmetric": False,
        }
        if method == "image_quantile":
            extra["TensorQuantOverrides"] = overrides

        def write(p: Path) -> None:
            quantize_static(
                str(pre), str(p), reader,
                quant_format=QuantFormat.QDQ, per_channel=per_channel, reduce_range=reduce_range,
                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=exclude, calibrate_method=_method("minmax" if method == "image_quantile" else method),
                extra_options=extra,
            )  # fmt: skip
            eq = (f", cross-layer equalization alpha={equalize} ({eq_info['depthwise_pointwise']} + "
                  f"{eq_info['pointwise_relu_depthwise']} pairs)") if eq_info else ""  # fmt: skip
            fmt = ("U8S8" if activation_type == "uint8" else "S8S8") + (", reduce_range" if reduce_range else "")
            kept = f", fp32={list(keep_fp32)}" if keep_fp32 else ""
            cal = f"image_quantile q={range_quantile or 0.9}" if method == "image_quantile" else method
            _finalize(p, {"quantization": f"int8 static QDQ {fmt}, per_channel={per_channel}, calibration={cal}, "
                                           f"images={len(positions)}, head_fp32={head_fp32}{kept}{eq}"})  # fmt: skip

        _save_atomic(write, out_path)
    if head_fp32:
        bad = head_violations(onnx.load(str(out_path)))
        if bad:
            raise RuntimeError("quantized head is not FP32: " + "; ".join(bad[:5]))
    copy_head_sidecar(fp32_path, out_path)
    if log:
        log(f"quantize: {method} INT8 static QDQ -> {out_path.name} "
            f"({out_path.stat().st_size / 1e6:.1f} MB, {time.time() - t0:.0f}s)")  # fmt: skip
    return out_path


def depthwise_conv_nodes(model: Any) -> list[str]:
    """Names of the depthwise Convs (group == input channels > 1)."""
    from onnx import numpy_helper

    m = _load(model)
    shapes = {t.name: numpy_helper.to_array(t).shape for t in m.graph.initializer}
    out = []
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        group = next((a.i for a in n.attribute if a.name == "group"), 1)
        w = shapes.get(n.input[1]) if len(n.input) > 1 else None
        if group > 1 and w is not None and w[1] == 1:
            out.append(n.name)
    return out


#: The two stem convolutions of the reference Xception. Their input is the raw 0..255 image (not centred), so a
#: weight's rounding error is multiplied by the image's large mean: kept FP32 (19k weights, ~5% of the MACs;
#: docs/int8_variants.md has the measured effect).
STEM_CONVS: tuple[str, ...] = ("/backbone/conv1/conv/Conv", "/backbone/conv2/conv/Conv")


def _keep_fp32_nodes(model: Any, keep: Sequence[str]) -> list[str]:
    names: list[str] = []
    for k in keep:
        if k == "depthwise":
            names += depthwise_conv_nodes(model)
        elif k == "stem":
            present = {n.name for n in _load(model).graph.node}
            missing = [c for c in STEM_CONVS if c not in present]
            if missing:
                raise ValueError(f"keep_fp32 'stem': no node {missing} (not the reference Xception graph?)")
            names += list(STEM_CONVS)
        elif k == "adds":  # the residual additions: the residual stream stays FP32 between convolutions
            names += [n.name for n in _load(model).graph.node if n.op_type == "Add" and n.name.startswith("/backbone/")]
        else:
            names.append(k)
    return names


def quantize_dynamic_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, *,
                          head_fp32: bool = True, per_channel: bool = True) -> Path:  # fmt: skip
    """INT8 dynamic (weights INT8 offline, activations quantized at run time); comparison only."""
    from onnxruntime.quantization import QuantType, quant_pre_process, quantize_dynamic

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    with tempfile.TemporaryDirectory(prefix="mendicant-quant-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_optimization=True)
        exclude = nodes_to_exclude(pre) if head_fp32 else []

        def write(p: Path) -> None:
            quantize_dynamic(str(pre), str(p), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_exclude=exclude)  # fmt: skip
            _finalize(p, {"quantization": f"int8 dynamic, per_channel={per_channel}, head_fp32={head_fp32}"})

        _save_atomic(write, out_path)
    copy_head_sidecar(fp32_path, out_path)
    return out_path


def convert_fp16(fp32_path: str | os.PathLike, out_path: str | os.PathLike, *, head_fp32: bool = True) -> Path:
    """FP16 weights and activations with float32 inputs/outputs (``onnxruntime.transformers.float16``);
    the head and Softmax stay FP32 when ``head_fp32``. Comparison only: the CPU provider runs few FP16
    kernels, so it mostly adds casts."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    model = onnx.load(str(fp32_path))
    block = nodes_to_exclude(model) if head_fp32 else None

    def write(p: Path) -> None:
        m16 = convert_float_to_float16(model, keep_io_types=True, node_block_list=block, disable_shape_infer=False)
        _toposort(m16.graph)
        onnx.save(m16, str(p))
        _finalize(p, {"quantization": f"fp16 (float32 IO), head_fp32={head_fp32}"})

    _save_atomic(write, out_path)
    copy_head_sidecar(fp32_path, out_path)
    return out_path


def compare_variants(fp32: str | os.PathLike, variants: dict[str, str | os.PathLike], images: Any, meta: Any,
                     positions: Sequence[int], *, threads: int = 2, rounds: int = 10,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """Size, batch-1 latency (every model in turn each round, one process) and agreement with ``fp32``."""
    paths = {"fp32": Path(fp32), **{k: Path(v) for k, v in variants.items()}}
    sessions = {k: ort_session(p, threads) for k, p in paths.items()}
    probs = {k: run_model(s, images, meta, positions) for k, s in sessions.items()}
    i0 = int(np.asarray(positions)[0])
    feeds = {"image": np.ascontiguousarray(np.asarray(images[i0], np.float32)[None]),
             "meta": np.ascontiguousarray(np.asarray(meta[i0], np.float32)[None])}  # fmt: skip
    for s in sessions.values():
        s.run(None, feeds)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            times[k].append((time.perf_counter() - t0) * 1e3)
    base = float(np.median(times["fp32"]))
    out: dict[str, Any] = {"n_images": len(positions), "threads": threads, "rounds": rounds, "models": {}}
    for k, p in paths.items():
        row = {"file": p.name, "size_mb": p.stat().st_size / 1e6, "p50_ms": float(np.median(times[k])),
               "latency_ratio": float(np.median(times[k])) / base}  # fmt: skip
        if k != "fp32":
            row.update(agreement(probs["fp32"], probs[k]))
        out["models"][k] = row
        if log:
            log(f"{k:>14}: {row['size_mb']:6.1f} MB  p50 {row['p50_ms']:7.1f} ms  x{row['latency_ratio']:.2f}"
                + (f"  top-1 {row['top1_agreement']:.4f}  max|dp| {row['max_abs_diff_probs']:.4f}" if k != "fp32" else ""))
    return out


# --------------------------------------------------------------------------------------------------
# Pipeline stage
# --------------------------------------------------------------------------------------------------


def calibration_positions(cfg: Any, index: Any, *, per_group: int | None = None,
                          pools: Sequence[str] | None = None) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """FST-balanced calibration positions from the *train* split of a :class:`compression.data.DataIndex`.

    FST per image as the data stage assigned it (PAD clinician label, else the ITA estimate). ``pools``
    restricts the pool (e.g. ``("ham10000", "external")`` for dermoscopy only).
    """
    recs = index.records
    eligible = [r.split == "train" and (pools is None or r.pool in pools) for r in recs]
    pos, counts = fst_balanced_selection(
        [r.fst for r in recs],
        per_group or cfg.quantize.calibration_per_group,
        rare_repeat=cfg.quantize.rare_group_repeat,
        seed=cfg.run.seed,
        eligible=eligible,
    )
    man = calibration_manifest([recs[i].relpath for i in pos], [recs[i].sha256 for i in pos])
    man["per_group"] = counts
    man["fst_source"] = dict(sorted({g: sorted({recs[i].fst_source for i in pos if recs[i].fst == g})
                                     for g in counts if counts[g]["taken"]}.items()))  # fmt: skip
    return pos, man


def run_stage(cfg: Any, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
              argv: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Export the fine-tuned student, then INT8-static (shipped), FP16 and INT8-dynamic variants."""
    from .data import load_index
    from .export import export_onnx
    from .prune import load_student

    run_dir = Path(run_dir)
    qdir = run_dir / "quantize"
    done = qdir / "quantize.json"
    if done.is_file():
        log("quantize: outputs exist; skipped")
        return json.loads(done.read_text())
    student_pt = run_dir / "train" / "student.pt"
    if not student_pt.is_file():
        raise FileNotFoundError(f"{student_pt} missing: run the train stage first")
    import torch

    torch.set_num_threads(cfg.run.threads)
    index = load_index(run_dir)
    qdir.mkdir(parents=True, exist_ok=True)
    fp32 = qdir / "student_fp32.onnx"
    if not fp32.is_file():
        export_onnx(load_student(student_pt), fp32)
        log(f"quantize: exported {fp32.name} ({fp32.stat().st_size / 1e6:.1f} MB)")
    pos, man = calibration_positions(cfg, index)
    log(f"quantize: FST-balanced calibration, {man['n']} images ({man['n_distinct']} distinct): "
        + ", ".join(f"{g} {c['taken']}" for g, c in man["per_group"].items()))  # fmt: skip
    int8 = quantize_int8_static(fp32, qdir / "student_int8.onnx", index.images, index.meta, pos,
                                per_channel=cfg.quantize.per_channel, head_fp32=cfg.quantize.head_fp32,
                                method=cfg.quantize.method, equalize=cfg.quantize.equalize,
                                threads=cfg.run.threads, log=log)  # fmt: skip
    extra: list[tuple[str, Path]] = []
    if cfg.quantize.equalize > 0:  # the same quantization without equalization, for the comparison table
        plain = quantize_int8_static(fp32, qdir / "student_int8_plain.onnx", index.images, index.meta, pos,
                                     per_channel=cfg.quantize.per_channel, head_fp32=cfg.quantize.head_fp32,
                                     method=cfg.quantize.method, equalize=0.0, threads=cfg.run.threads,
                                     log=log)  # fmt: skip
        extra.append(("int8_plain", plain))
    fp16 = convert_fp16(fp32, qdir / "student_fp16.onnx", head_fp32=cfg.quantize.head_fp32)
    dyn = quantize_dynamic_int8(fp32, qdir / "student_int8_dynamic.onnx", head_fp32=cfg.quantize.head_fp32)
    # Agreement of every variant with the student FP32 on the validation split.
    val = index.indices("val")
    s32 = ort_session(fp32, cfg.run.threads)
    p32 = run_model(s32, index.images, index.meta, val)
    variants: dict[str, Any] = {}
    for name, path in (("int8", int8), *extra, ("fp16", fp16), ("int8_dynamic", dyn)):
        pq = run_model(ort_session(path, cfg.run.threads), index.images, index.meta, val)
        variants[name] = {"file": path.name, "size_bytes": path.stat().st_size, **agreement(p32, pq)}
        log(f"quantize: {name}: {path.stat().st_size / 1e6:.1f} MB, top-1 agreement with FP32 "
            f"{variants[name]['top1_agreement']:.4f}, max|dp| {variants[name]['max_abs_diff_probs']:.4f}")
    result = {"fp32": fp32.name, "variants": variants, "calibration": man, "shipped": int8.name}
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m compression.quantize FP32.onnx OUT.onnx [--method m] [--per-group n]``: quantize any
    exported model with FST-balanced calibration from the main run's data index."""
    import argparse

    from .config import load_config
    from .data import build_data

    p = argparse.ArgumentParser(prog="python -m compression.quantize")
    p.add_argument("fp32", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--method", choices=CALIBRATION_METHODS, default="minmax")
    p.add_argument("--per-group", type=int, default=None)
    p.add_argument("--config", default=None)
    a = p.parse_args(argv)
    cfg = load_config(a.config)
    index = build_data(cfg, cfg.run_dir())
    pos, man = calibration_positions(cfg, index, per_group=a.per_group)
    quantize_int8_static(a.fp32, a.out, index.images, index.meta, pos, method=a.method, log=print)
    print(json.dumps({k: v for k, v in man.items() if k != "images"}, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
