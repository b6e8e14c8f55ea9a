"""FP32 ONNX export of the reference network (or any :class:`ReferenceNet`, e.g. a pruned one).

The graph has inputs ``image`` (N,254,254,3 NHWC float32 0..255) and ``meta`` (N,10), outputs ``probs``
(N,7) and ``features`` (N,C,h,w NCHW, block14_sepconv2_act), a dynamic batch axis, every BatchNorm and
the input Normalization folded into the convs / Linears, and is optionally simplified with onnxslim or
ONNX Runtime's (portable, basic-level) offline optimiser.

Beside ``<name>.onnx`` goes ``<name>.head.npz``: the classification head as float32 arrays (weights as
(in, out), each BatchNorm as the inference affine applied after its ReLU), which the numpy-only app uses
for exact Grad-CAM weights d logit_c / d pooled features and to re-check the logits.

CLI: ``python -m compression.export [--out PATH] [--optimize onnxslim|ort|none]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mendicant_desktop.core.bundle import sha256_file

from .reference import (
    CLASSES,
    HEAD_KEYS,
    SKLESION_VERSION,
    ReferenceHead,
    ReferenceNet,
    fold_batchnorm,
    head_arrays,
    head_forward_numpy,
    load_reference,
)

__all__ = [
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "DEFAULT_OPSET",
    "default_models_dir",
    "head_npz_path",
    "write_head_npz",
    "load_head_npz",
    "export_onnx",
    "optimize_onnx",
    "verify_onnx",
    "export_reference_fp32",
    "main",
]

INPUT_NAMES: tuple[str, str] = ("image", "meta")
OUTPUT_NAMES: tuple[str, str] = ("probs", "features")
#: The torch.export-based exporter; opset 17 fails there on this torch, 18 works.
DEFAULT_OPSET = 18
MODELS_ENV = "MENDICANT_MODELS_DIR"


def default_models_dir() -> Path:
    """``$MENDICANT_MODELS_DIR`` or ``~/.cache/mendicant/models`` (never the repository)."""
    env = os.environ.get(MODELS_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mendicant" / "models"


def head_npz_path(onnx_path: str | os.PathLike) -> Path:
    """``dir/<name>.onnx`` -> ``dir/<name>.head.npz``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".head.npz")


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temp file in ``path``'s folder that replaces ``path`` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_head_npz(head: ReferenceHead, path: str | os.PathLike) -> Path:
    """Write the head sidecar (keys :data:`compression.reference.HEAD_KEYS`, all float32)."""
    path = Path(path)
    arrays = head_arrays(head)
    with _atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def load_head_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in HEAD_KEYS if k not in z.files]
        if missing:
            raise KeyError(f"{path}: head sidecar lacks {missing}")
        return {k: z[k] for k in HEAD_KEYS}


def _rename_nodes(model) -> None:
    """Give nodes module-scoped names (``/head/fc/Gemm``) from the exporter's name-scope metadata, and drop
    the per-node metadata (stack traces with local paths). Scoped names let later tools pick nodes by
    module (e.g. keep ``/head/`` in FP32 when quantising)."""
    import ast

    used: dict[str, int] = {}
    for node in model.graph.node:
        scopes = None
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                with contextlib.suppress(ValueError, SyntaxError):
                    scopes = ast.literal_eval(prop.value)
        module = ""
        if scopes and len(scopes) >= 2 and scopes[-2]:
            module = "/" + str(scopes[-2]).replace(".", "/")
        base = f"{module}/{node.op_type}"
        n = used.get(base, 0)
        used[base] = n + 1
        node.name = base if n == 0 else f"{base}_{n}"
        del node.metadata_props[:]


def optimize_onnx(path: str | os.PathLike, method: str = "onnxslim") -> Path:
    """Simplify the model at ``path`` in place (``onnxslim``, ``ort`` = ORT basic offline optimisation,
    or ``none``), keeping the input/output names, which is checked."""
    import onnx

    path = Path(path)
    if method == "none":
        return path
    before = onnx.load(str(path))
    names = ([i.name for i in before.graph.input], [o.name for o in before.graph.output])
    props = {p.key: p.value for p in before.metadata_props}
    if method == "onnxslim":
        import onnxslim

        optimized = onnxslim.slim(before)
    elif method == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        # Basic level only: its rewrites are plain ONNX, unlike the extended/layout ones (FusedConv, NCHWc).
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        with tempfile.TemporaryDirectory(prefix="mendicant-ort-opt-") as tmp:
            so.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
            ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            optimized = onnx.load(so.optimized_model_filepath)
    else:
        raise ValueError(f"unknown optimisation {method!r} (onnxslim, ort or none)")
    after = ([i.name for i in optimized.graph.input], [o.name for o in optimized.graph.output])
    if after != names:
        raise RuntimeError(f"{method} changed the graph's input/output names: {names} -> {after}")
    used_domains = {n.domain or "" for n in optimized.graph.node} | {""}
    kept = [o for o in optimized.opset_import if (o.domain or "") in used_domains]
    del optimized.opset_import[:]
    optimized.opset_import.extend(kept)
    existing = {p.key for p in optimized.metadata_props}
    for k, v in props.items():
        if k not in existing:
            optimized.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(optimized)
    with _atomic_path(path) as tmp:
        onnx.save(optimized, str(tmp))
    return path


def export_onnx(
    model: ReferenceNet,
    path: str | os.PathLike,
    *,
    fold: bool = True,
    optimize: str = "onnxslim",
    opset: int = DEFAULT_OPSET,
    write_head: bool = True,
    example_batch: int = 2,
) -> Path:
    """Export ``model`` to an FP32 ONNX file (single file, no external data) and its head sidecar.

    ``fold`` folds every BatchNorm and the input Normalization first (the exporter would otherwise leave
    Sub/Mul/Add chains that ONNX Runtime does not fuse). The head sidecar is written from the unfolded head.
    Returns the ONNX path.
    """
    import onnx

    path = Path(path)
    model = model.eval()
    if model.output != "probs":
        raise ValueError("export a model whose forward returns probabilities (output='probs')")
    to_export = fold_batchnorm(model) if fold else model
    size = (254, 254)
    image = torch.rand(example_batch, *size, 3) * 255.0
    meta = torch.zeros(example_batch, model.head.meta_fc1.in_features)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory(prefix="mendicant-export-") as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # torch.export's own chatter (FutureWarning from pytree, axis-name notes) is not ours to fix.
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(
                to_export,
                (image, meta),
                str(raw),
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                dynamic_shapes={"image": {0: batch}, "meta": {0: batch}},
                verbose=False,
            )
        proto = onnx.load(str(raw))
    _rename_nodes(proto)
    proto.producer_name = "mendicant-compression"
    del proto.metadata_props[:]
    for key, value in {
        "source": f"sklesion=={SKLESION_VERSION} (MIT), Keras Xception + metadata branch",
        "classes": ",".join(CLASSES),
        "image": "N,254,254,3 NHWC float32 RGB 0..255",
        "meta": "N,10 float32: sex(f,m,u) site(arm,head-or-neck,leg-or-genital,trunk,unknown) age/90 age_missing",
        "features": "block14_sepconv2_act, NCHW",
        "bn_folded": str(bool(fold)).lower(),
    }.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    with _atomic_path(path) as tmp:
        onnx.save(proto, str(tmp))
    optimize_onnx(path, optimize)
    if write_head:
        write_head_npz(model.head, head_npz_path(path))
    return path


def verify_onnx(
    path: str | os.PathLike,
    model: ReferenceNet,
    image: np.ndarray,
    meta: np.ndarray,
    *,
    threads: int = 2,
) -> dict[str, float]:
    """Max abs differences ONNX Runtime vs ``model`` (and the head sidecar vs the torch logits)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    image = np.ascontiguousarray(image, np.float32)
    meta = np.ascontiguousarray(meta, np.float32)
    probs_o, feats_o = sess.run(list(OUTPUT_NAMES), {"image": image, "meta": meta})
    with torch.no_grad():
        logits_t, feats_t = model.eval().logits_and_features(torch.from_numpy(image), torch.from_numpy(meta))
        probs_t = torch.softmax(logits_t, dim=1)
    result = {
        "probs": float(np.abs(probs_o - probs_t.numpy()).max()),
        "features": float(np.abs(feats_o - feats_t.numpy()).max()),
    }
    npz = head_npz_path(path)
    if npz.is_file():
        head = load_head_npz(npz)
        logits_np = head_forward_numpy(head, feats_o.mean(axis=(2, 3)), meta)
        result["head_logits"] = float(np.abs(logits_np - logits_t.numpy()).max())
    return result


def export_reference_fp32(
    out_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    optimize: str = "onnxslim",
) -> tuple[Path, Path]:
    """Load the sklesion weights and write ``reference_fp32.onnx`` + ``reference_fp32.head.npz``.

    ``out_path`` defaults to :func:`default_models_dir` / ``reference_fp32.onnx``. Returns both paths.
    """
    out = Path(out_path) if out_path is not None else default_models_dir() / "reference_fp32.onnx"
    model = load_reference(cache_dir)
    export_onnx(model, out, optimize=optimize)
    return out, head_npz_path(out)


#: Export tolerances (max |diff| ONNX Runtime vs torch on real validation images).
TOL_PROBS = 1e-4
TOL_FEATURES_REL = 1e-3  # relative to the largest feature value (0.1 %: far below what a Grad-CAM map shows)


def run_stage(cfg: Any, run_dir: str | os.PathLike, *, log: Callable[[str], None] = print,
              argv: Sequence[str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Pipeline stage: the fine-tuned student -> ``<run>/quantize/student_fp32.onnx`` (opset 18, dynamic batch,
    ``probs`` + ``features``, BN folded, onnxslim) and its numeric check against the torch student on 16 real
    validation images, written to ``<run>/export/export.json``. Raises when the difference exceeds the
    tolerances, so nothing downstream quantizes a wrong export."""
    import json

    from .data import load_index
    from .prune import load_student

    run_dir = Path(run_dir)
    out = run_dir / "quantize" / "student_fp32.onnx"
    student_pt = run_dir / "train" / "student.pt"
    if not student_pt.is_file():
        raise FileNotFoundError(f"{student_pt} missing: run the train stage first")
    torch.set_num_threads(cfg.run.threads)
    student = load_student(student_pt).eval()
    t0 = time.time()
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(student, out)
        log(f"export: wrote {out.name} ({out.stat().st_size / 1e6:.1f} MB, {time.time() - t0:.0f}s)")
    index = load_index(run_dir)
    val = index.indices("val")
    pos = np.sort(np.random.default_rng(cfg.run.seed).choice(val, size=min(16, len(val)), replace=False))
    diffs = verify_onnx(out, student, np.asarray(index.images[pos], np.float32), index.meta[pos],
                        threads=cfg.run.threads)  # fmt: skip
    import onnx

    m = onnx.load(str(out))
    ops = sorted({n.op_type for n in m.graph.node})
    with torch.no_grad():
        _, feats = student.logits_and_features(torch.from_numpy(np.asarray(index.images[pos[:2]], np.float32)),
                                               torch.from_numpy(index.meta[pos[:2]]))  # fmt: skip
    fmax = float(feats.abs().max())
    res = {"onnx": out.name, "sha256": sha256_file(out), "opset": max(o.version for o in m.opset_import
                                                                          if o.domain in ("", "ai.onnx")),
           "ops": ops, "n_images": len(pos), "max_abs_diff": diffs, "feature_scale": fmax,
           "tolerance": {"probs": TOL_PROBS, "features_rel": TOL_FEATURES_REL},
           "batch_norm_left": "BatchNormalization" in ops}  # fmt: skip
    res["passed"] = (diffs["probs"] <= TOL_PROBS and diffs["features"] <= TOL_FEATURES_REL * max(fmax, 1.0)
                     and not res["batch_norm_left"])  # fmt: skip
    res["seconds"] = round(time.time() - t0, 1)  # this invocation: the export (if it ran) and the check
    (run_dir / "export").mkdir(parents=True, exist_ok=True)
    (run_dir / "export" / "export.json").write_text(json.dumps(res, indent=2) + "\n", encoding="utf-8")
    log(f"export: ORT vs torch on {len(pos)} real val images: max|dp| {diffs['probs']:.2e}, features "
        f"{diffs['features']:.2e} (of max {fmax:.1f}), opset {res['opset']}, "
        f"{'no BatchNormalization left' if not res['batch_norm_left'] else 'BatchNormalization LEFT'}")  # fmt: skip
    if not res["passed"]:
        raise RuntimeError(f"export check failed: {diffs} (tolerances {res['tolerance']})")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="ONNX path (default: the models cache)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="folder holding the sklesion wheel")
    parser.add_argument("--optimize", choices=("onnxslim", "ort", "none"), default="onnxslim")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    onnx_path, npz_path = export_reference_fp32(args.out, cache_dir=args.cache_dir, optimize=args.optimize)
    rng = np.random.default_rng(0)
    image = (rng.random((2, 254, 254, 3)) * 255).astype(np.float32)
    meta = np.zeros((2, 10), np.float32)
    meta[:, 2], meta[:, 7], meta[:, 8], meta[:, 9] = 1, 1, 51.9 / 90, 1
    diffs = verify_onnx(onnx_path, load_reference(args.cache_dir), image, meta, threads=args.threads)
    size_mb = onnx_path.stat().st_size / 1e6
    print(f"wrote {onnx_path} ({size_mb:.1f} MB) and {npz_path}")
    print("max |diff| torch vs ORT (random input): " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
