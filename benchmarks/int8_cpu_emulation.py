"""INT8 outputs on a CPU without VNNI, emulated: the same model file, the same inputs, native vs QEMU ``-cpu Haswell``.

    python benchmarks/int8_cpu_emulation.py [--run runs/adapted-4] [--n 12] [--models int8,plain]

Why: ONNX Runtime picks its integer kernels from CPUID. On x86 without VNNI (AVX2, plain AVX-512) the U8S8 kernels
add pairs of u8 x s8 products in int16 and saturate, so the same INT8 file scores differently there. This machine
has VNNI; QEMU's user-mode emulator with ``-cpu Haswell`` (AVX2, FMA, no AVX-512, no VNNI) makes ONNX Runtime take
its AVX2 path for the very same Python, numpy and onnxruntime, so both paths can be compared here. It is slow
(about 30 s per image for the full-size network), hence a benchmark, not a test.

Models: ``int8`` is the shipped format (U8S8 with 7-bit weights, ``reduce_range``); ``plain`` is the same network
quantized with 8-bit weights (the previous format), built here on the same calibration images for the contrast;
``plain_x64qp`` is ``plain`` run with ONNX Runtime's ``session.x64quantprecision`` option (which converts some
U8S8 products to U8U8 on x86 without VNNI).
Inputs: ``--n`` gate-split images (a third per data set) and the bundle's synthetic kernel-check inputs.

Writes ``benchmarks/results/int8_cpu_emulation.json``: per model, max |Δp| and top-1 agreement between the two
CPUs, and each one's max |Δp| against the FP32 counterpart, with both CPUs' feature flags.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "int8_cpu_emulation.json"
WORKER = """
import json, sys, numpy as np, onnxruntime as ort
from numpy._core._multiarray_umath import __cpu_features__ as f
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.log_severity_level = 3
z = np.load(sys.argv[2])
out = {}
qp = ort.SessionOptions(); qp.intra_op_num_threads = 1; qp.log_severity_level = 3
qp.add_session_config_entry("session.x64quantprecision", "1")
for name, path in json.loads(sys.argv[1]).items():
    s = ort.InferenceSession(path, qp if name.endswith("_x64qp") else so, providers=["CPUExecutionProvider"])
    out[name] = np.concatenate([s.run(["probs"], {"image": z["x"][i:i+4], "meta": z["m"][i:i+4]})[0]
                                for i in range(0, len(z["x"]), 4)])
np.savez(sys.argv[3], **out)
print(json.dumps({k: bool(f.get(k, False)) for k in ("AVX2", "AVX512F", "AVX512VNNI", "AVXVNNI")}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=str(REPO / "runs" / "adapted-4"))
    p.add_argument("--n", type=int, default=12)
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from compression.adapt import load_split, metadata_matrix, synthetic_check_images
    from compression.config import load_config
    from compression.gate import reference_rows
    from compression.quantize import quantize_int8_static
    from mendicant_desktop.core.preprocess import MODEL_SIZE, load_image, preprocess

    qemu = shutil.which("qemu-x86_64")
    if not qemu:
        print("qemu-x86_64 not found (Debian package qemu-user)", file=sys.stderr)
        return 2
    cfg = load_config()
    run = Path(args.run)
    adapt = json.loads((run / "adapt" / "adapt.json").read_text())
    sd = load_split(cfg)
    rows = reference_rows(sd, args.n, cfg.run.seed)
    x = np.stack([preprocess(load_image(sd.shared / sd.records[i].relpath), MODEL_SIZE) for i in rows])
    m = metadata_matrix([sd.records[i] for i in rows])
    chk = synthetic_check_images(cfg.adapt.check_inputs).astype(np.float32)
    x = np.concatenate([x, chk]).astype(np.float32)
    m = np.concatenate([m, np.repeat(_blank(), len(chk), 0)]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        plain = tmp / "plain_u8s8.onnx"
        cal = [int(i) for i in adapt["calibration_rows"]]
        imgs = np.stack([preprocess(load_image(sd.shared / sd.records[i].relpath), MODEL_SIZE) for i in cal])
        quantize_int8_static(run / "adapt" / "teacher_fp32.onnx", plain, imgs.astype(np.float32),
                             metadata_matrix([sd.records[i] for i in cal]), list(range(len(cal))),
                             method=cfg.adapt.method, reduce_range=False, keep_fp32=cfg.adapt.keep_fp32,
                             batch_size=8)  # fmt: skip
        models = {"fp32": str(run / "adapt" / "teacher_fp32.onnx"), "int8": str(run / "adapt" / "teacher_int8.onnx"),
                  "plain": str(plain), "plain_x64qp": str(plain)}  # fmt: skip
        np.savez(tmp / "in.npz", x=x, m=m)
        py = sys.executable
        res = {}
        for cpu, prefix in (("native", []), ("haswell", [qemu, "-cpu", "Haswell"])):
            t0 = time.time()
            names = {k: v for k, v in models.items() if cpu == "native" or k != "fp32"}
            out = subprocess.run([*prefix, py, "-c", WORKER, json.dumps(names), str(tmp / "in.npz"),
                                  str(tmp / f"{cpu}.npz")], capture_output=True, text=True, check=True)  # fmt: skip
            flags = json.loads(out.stdout.strip().splitlines()[-1])
            res[cpu] = {"flags": flags, "seconds": time.time() - t0}
        nat, has = np.load(tmp / "native.npz"), np.load(tmp / "haswell.npz")
        fp32 = nat["fp32"]
        summary = {}
        for k in ("int8", "plain", "plain_x64qp"):
            summary[k] = {
                "max_abs_diff_native_vs_haswell": float(np.abs(nat[k] - has[k]).max()),
                "top1_agreement_native_vs_haswell": float((nat[k].argmax(1) == has[k].argmax(1)).mean()),
                "max_abs_diff_vs_fp32_native": float(np.abs(nat[k] - fp32).max()),
                "max_abs_diff_vs_fp32_haswell": float(np.abs(has[k] - fp32).max()),
                "top1_vs_fp32_native": float((nat[k].argmax(1) == fp32.argmax(1)).mean()),
                "top1_vs_fp32_haswell": float((has[k].argmax(1) == fp32.argmax(1)).mean()),
            }
    result = {"n_images": len(rows), "n_check_inputs": len(chk), "cpus": res, "models": summary,
              "int8_sha256": adapt["int8"]["sha256"], "generated_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "emulator": subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=1))
    return 0


def _blank() -> np.ndarray:
    from mendicant_desktop.core.metadata import encode_metadata

    return encode_metadata(None)[None]


if __name__ == "__main__":
    raise SystemExit(main())
