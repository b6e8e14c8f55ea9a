"""Repeated-split estimates of the adapted teacher's head (a head-only model): how much its figures move with the split.

    python benchmarks/repeated_splits.py [--seeds 5] [--run runs/adapted-1]

The committed split is one draw. For each of ``--seeds`` other split seeds the whole head procedure is re-run from
the cached pooled features of the frozen backbone (``compression.adapt``: the same views, the heads' C fixed at the
values the committed build chose on its select split, the same metadata blanking) and scored on that draw's gate
split in FP32 (numpy; the ONNX graph computes the same to 1e-6). Reported: each draw's AUROCs and gaps, and their
mean, standard deviation, min and max. The committed build's own draw is included as seed 0 of the table.

Writes ``benchmarks/results/repeated_splits.json``; ``benchmarks/adapted_benchmark.py`` renders it into
``docs/compression_results.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "repeated_splits.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--run", default=str(REPO / "runs" / "adapted-1"))
    args = p.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from compression.adapt import (
        CLASSES,
        QUESTIONS,
        TAPS,
        SplitData,
        evaluate,
        feature_cache_key,
        fit_heads,
        hash_records,
        manifest_sha256,
        metadata_matrix,
        read_all_records,
        reference_fp32,
        three_way_split,
        training_rows,
    )
    from compression.config import load_config
    from compression.data import shared_data_dir
    from mendicant_desktop.core.cpu import describe_cpu

    cfg = load_config()
    adapt = json.loads((Path(args.run) / "adapt" / "adapt.json").read_text())
    cm, c7 = adapt["heads"]["c_malignancy"], adapt["heads"]["c_classes"]
    shared = shared_data_dir(cfg)
    recs = read_all_records(shared)
    hash_records(recs, shared)
    import hashlib

    fp32 = reference_fp32()
    model_sha = hashlib.sha256(fp32.read_bytes()).hexdigest()
    cache = REPO / "runs" / "adapt-cache"
    key = feature_cache_key(model_sha, [r.sha256 for r in recs], "id")
    with np.load(cache / f"features_id_{key[:16]}.npz") as z:
        assert str(z["key"]) == key
        X = np.concatenate([z[t] for t in TAPS.values()], 1)
    dims = [728, 728, 728, 1024, 2048]
    # The flipped view exists for the committed train split only; every draw uses the identity view alone, so the
    # spread is of the procedure "id view, C fixed", which the table says.
    draws = []
    a = cfg.adapt
    for k in range(args.seeds + 1):
        seed = a.split_seed + k
        t0 = time.time()
        split = three_way_split(recs, select=a.select_fraction, gate=a.gate_fraction, seed=seed)
        sd = SplitData(recs, split, manifest_sha256(recs, split), shared)
        train, gate = sd.rows("train"), sd.rows("gate")
        Xt, M, R, W = training_rows(recs, train, [X[train]])
        heads = fit_heads(Xt, M, R, W, c7=c7, cm=cm, taps=tuple(TAPS.values()), dims=dims, seed=cfg.run.seed)
        full = np.zeros((len(recs), len(CLASSES)), np.float32)
        full[gate] = heads.probs(X[gate], metadata_matrix([recs[i] for i in gate]))
        ev = evaluate(full, recs, gate)
        row = {"split_seed": seed, "committed": k == 0, "seconds": time.time() - t0,
               **{q: ev[q]["auroc"] for q in QUESTIONS},
               "pad_gap": ev["pad_fst_labelled"]["gap"], "fitz_gap": ev["fitz_malignant"]["gap"],
               **{f"fitz_{g}": ev["fitz_malignant"]["groups"][g]["auroc"] for g in ("I-II", "III-IV", "V-VI")}}  # fmt: skip
        draws.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in draws[0] if k not in ("split_seed", "committed", "seconds")]
    summary = {k: {"mean": float(np.nanmean([d[k] for d in draws])), "sd": float(np.nanstd([d[k] for d in draws], ddof=1)),
                   "min": float(np.nanmin([d[k] for d in draws])), "max": float(np.nanmax([d[k] for d in draws]))}
               for k in keys}  # fmt: skip
    out = {"draws": draws, "summary": summary, "procedure": "identity view, C fixed at the build's choice "
           f"(C_mal={cm}, C_7={c7}), FP32 heads in numpy, each draw's gate split", "cpu_summary": describe_cpu(),
           "config": {k: v for k, v in dataclasses.asdict(a).items() if k in ("select_fraction", "gate_fraction")},
           "generated_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
