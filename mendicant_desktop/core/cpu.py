"""The CPU features that decide which INT8 kernels ONNX Runtime runs, read portably through numpy.

ONNX Runtime's U8S8 kernels saturate on x86 without VNNI (AVX2, plain AVX-512), so an INT8 model's outputs depend
on the CPU. Every report that quotes an INT8 figure records these flags (validate's report, the model card, the
engine's load-time self-check).
"""

from __future__ import annotations

import platform
from functools import lru_cache

#: The flags that matter for ONNX Runtime's integer GEMM dispatch on x86 (numpy's names).
KEY_FEATURES: tuple[str, ...] = ("AVX2", "AVX512F", "AVX512VNNI", "AVX512_VNNI", "AVXVNNI", "AVX_VNNI", "FMA3",
                                 "ASIMD", "ASIMDDP")


#: The /proc/cpuinfo flags that decide ONNX Runtime's INT8 kernels (benchmarks and expected-value fixtures record
#: them; numpy does not report ``avx_vnni``).
INT8_CPU_FEATURES: tuple[str, ...] = ("avx2", "avx512_vnni", "avx_vnni")


def int8_cpu_flags() -> list[str]:
    """Which of :data:`INT8_CPU_FEATURES` this CPU has: /proc/cpuinfo on Linux, else numpy's view of it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            flags = set(fh.read().split())
    except OSError:
        f = cpu_features()
        flags = {name for name, key in (("avx2", "AVX2"), ("avx512_vnni", "AVX512VNNI")) if f.get(key)}
    return sorted(f for f in INT8_CPU_FEATURES if f in flags)


@lru_cache(maxsize=1)
def cpu_features() -> dict[str, object]:
    """``{"machine": ..., "AVX2": bool, "AVX512F": bool, "VNNI": bool, ...}`` for this process's CPU."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as feats  # type: ignore[no-redef]
    out: dict[str, object] = {"machine": platform.machine()}
    for k in KEY_FEATURES:
        if k in feats:
            out[k] = bool(feats[k])
    out["VNNI"] = any(bool(feats.get(k, False)) for k in ("AVX512VNNI", "AVX512_VNNI", "AVXVNNI", "AVX_VNNI"))
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            out["VNNI"] = bool(out["VNNI"] or {"avx_vnni", "avx512_vnni"} & set(fh.read().split()))
    except OSError:
        pass
    return out


def describe_cpu() -> str:
    """A one-line summary, e.g. ``x86_64 AVX2 AVX-512 VNNI``."""
    f = cpu_features()
    parts = [str(f.get("machine", "?"))]
    if f.get("AVX2"):
        parts.append("AVX2")
    if f.get("AVX512F"):
        parts.append("AVX-512")
    parts.append("VNNI" if f.get("VNNI") else "no VNNI")
    return " ".join(parts)
