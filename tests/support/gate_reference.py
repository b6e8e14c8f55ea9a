"""The bundled model's FP32 counterpart on the whole gate split: the fixture the suite's gate test reads.

Why: the gate compares the INT8 model with its FP32 counterpart on the gate split's 1,231 images. Scoring both
on a 2-core AVX2 laptop takes about 12 minutes, which alone would break the suite's 20-minute budget. FP32
results do not depend on the CPU's INT8 kernels (any x86 CPU reproduces them to about 1e-5), so they are
computed once, here, and committed; the test scores only the INT8 side live, re-scores a sample of FP32 rows to
prove the fixture still belongs to this FP32 model, and measures latency with both files.

    python -m tests.support.gate_reference            # from the repository root, after a model is shipped

writes ``tests/fixtures/bundled_gate_fp32.json``: the model and split it belongs to (sha256 of the bundled INT8
file, of its rebuilt FP32 counterpart and of the split manifest), the machine, and the probabilities per gate
image (relative path, in ``sd.rows("gate")`` order). The build's own gate (``python -m compression validate``)
never reads it: it scores both models itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "bundled_gate_fp32.json"


def build(card_path: Path, backbone: Path, work: Path, *, threads: int = 2) -> dict[str, Any]:
    """The fixture's content: the FP32 counterpart of ``card_path``'s model scored on the gate split."""
    from compression.adapt import fp32_counterpart, library_versions, load_split, ort_probs
    from compression.config import load_config
    from mendicant_desktop.core.cpu import describe_cpu

    card = json.loads(card_path.read_text(encoding="utf-8"))
    int8 = card_path.parent / card["file"]
    teacher = fp32_counterpart(int8, backbone, work / "teacher_fp32.onnx")
    sd = load_split(load_config())
    gate = sd.rows("gate")
    t0 = time.perf_counter()
    p = ort_probs(teacher, sd.records, gate, sd.shared, threads=threads)
    return {
        "what": "FP32 counterpart probabilities on the gate split (tests/support/gate_reference.py)",
        "model": {"name": card["name"], "version": card["version"], "int8_sha256": card["sha256"],
                  "fp32_counterpart_sha256": hashlib.sha256(Path(teacher).read_bytes()).hexdigest()},
        "split_sha256": sd.sha256,
        "made_on": {"cpu": describe_cpu(), "libraries": library_versions(),
                    "seconds": round(time.perf_counter() - t0, 1)},
        "classes": card["class_names"],
        "rows": [[sd.records[int(i)].relpath, *(round(float(v), 8) for v in p[k])] for k, i in enumerate(gate)],
    }


def read(path: Path = FIXTURE) -> tuple[dict[str, Any], list[str], np.ndarray]:
    """(header, relpaths, probabilities) of the fixture."""
    d = json.loads(path.read_text(encoding="utf-8"))
    rows = d.pop("rows")
    return d, [r[0] for r in rows], np.array([r[1:] for r in rows], np.float32)


def main() -> int:
    from mendicant_desktop.core.bundle import default_model_card
    from tests.compression._tiny import fp32_reference_or_skip

    backbone = fp32_reference_or_skip(export=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = build(default_model_card(), Path(backbone), Path(tmp))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    FIXTURE.write_text(json.dumps(data, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE.relative_to(REPO)}: {len(data['rows'])} gate images, {data['model']['name']} "
          f"{data['model']['version']}, in {data['made_on']['seconds']} s on {data['made_on']['cpu']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
