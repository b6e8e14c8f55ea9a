"""The first bundled model: the reference network as INT8 static QDQ, with a model card computed by code.

``python -m compression.bundle_reference [--name N] [--version V] [--method minmax|percentile|entropy]``

1. Data: the main run's decoded index (``compression.data``; built if missing) with its train/val split.
2. Calibration: FST-balanced (``compression.quantize.fst_balanced_selection``) over the *train* split of
   the ISIC dermoscopy pools (ham10000 + external-train), ``--per-group`` images per FST group (ITA
   estimate), V-VI taken twice: >= 128 distinct real dermoscopy images.
3. INT8 static QDQ (per-channel weights, head + Softmax FP32) of the FP32 export in the models cache.
4. FP32 and INT8 on every image of ``../shared/data`` (agreement, feature SQNR; predictions cached).
5. Threshold on the train split of the non-HAM pools (:func:`compression.card.choose_threshold`), metrics on
   the validation split (:func:`compression.card.card_metrics`), provenance, card via
   :func:`mendicant_desktop.core.bundle.make_card`.
6. Staged in a temp folder, then moved into ``resources/models/`` (card last), verified with
   ``ModelBundle.load`` and an ``Engine`` prediction on a real image.

Steps 4-6 use the code :mod:`compression.ship` shares with the pipeline's ``ship`` stage (which bundles a
gated student the same way and, unlike this script, replaces the previously bundled model).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mendicant_desktop.core.bundle import sha256_file

from .card import build_provenance, limitations
from .quantize import calibration_positions, quantize_int8_static
from .ship import (
    assemble_card,
    card_figures,
    move_into_place,
    score_models,
    verify_bundle,
    write_calibration_csv,
)

__all__ = ["DEFAULT_NAME", "DEFAULT_VERSION", "build_first_model", "main"]

DEFAULT_NAME = "mendicant-xception-ref-int8"
DEFAULT_VERSION = "0.1.0"
REPO = Path(__file__).resolve().parents[1]
DERMOSCOPY_POOLS = ("ham10000", "external")


def _verify(card_path: Path, shared: Path, log: Callable[[str], None]) -> dict[str, Any]:
    img = sorted((shared / "isic_dermoscopy" / "images").glob("*.jpg"))[0]
    return verify_bundle(card_path, img, log)


def build_first_model(
    *,
    name: str = DEFAULT_NAME,
    version: str = DEFAULT_VERSION,
    out_dir: Path | None = None,
    method: str = "minmax",
    per_group: int = 48,
    teacher: Path | None = None,
    threads: int = 2,
    n_boot: int = 1000,
    card_only: bool = False,
    log: Callable[[str], None] = print,
) -> Path:
    from .config import load_config
    from .data import build_data
    from .export import default_models_dir, export_reference_fp32, head_npz_path

    t0 = time.time()
    out_dir = Path(out_dir) if out_dir else REPO / "resources" / "models"
    cfg = load_config()
    teacher = Path(teacher) if teacher else default_models_dir() / "reference_fp32.onnx"
    if not teacher.is_file():
        log(f"exporting the FP32 reference to {teacher}")
        export_reference_fp32(teacher)
    index = build_data(cfg, cfg.run_dir(), log=log)
    records = index.records
    from .data import shared_data_dir

    shared = shared_data_dir(cfg)
    pos, man = calibration_positions(cfg, index, per_group=per_group, pools=DERMOSCOPY_POOLS)
    if man["n_distinct"] < 128:
        raise RuntimeError(f"only {man['n_distinct']} distinct calibration images (need >= 128)")
    log(f"calibration: {man['n']} images ({man['n_distinct']} distinct dermoscopy, train split): "
        + ", ".join(f"{g} {c['taken']}" for g, c in man["per_group"].items()))  # fmt: skip

    stage = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir if out_dir.is_dir() else None))
    try:
        onnx_path = stage / f"{name}.onnx"
        existing = out_dir / f"{name}.onnx"
        if card_only:
            if not existing.is_file():
                raise FileNotFoundError(f"--card-only: {existing} does not exist")
            shutil.copyfile(existing, onnx_path)
            log(f"card only: re-using {existing} (sha256 {sha256_file(onnx_path)[:12]})")
        else:
            quantize_int8_static(teacher, onnx_path, index.images, index.meta, pos, method=method, per_channel=True,
                                 head_fp32=True, log=log)  # fmt: skip
        calib_csv = stage / f"{name}.calibration.csv"
        write_calibration_csv(calib_csv, records, pos)

        # FP32 and INT8 on every image (agreement), both cached for the gate; threshold on the train split of
        # the non-HAM pools (never on the validation split), metrics on the validation split.
        scores = score_models(teacher, onnx_path, index, threads=threads, log=log)
        thr, _agree, metrics = card_figures(
            scores, records, calibration_relpaths=[records[int(i)].relpath for i in pos], seed=cfg.run.seed,
            n_boot=n_boot, log=log,
            chosen_on="train split of the ISIC external pool and PAD (the pools the app meets; the ham10000 "
                      "pool is excluded because the teacher was trained on it), INT8 model's scores",
        )  # fmt: skip
        calibration = {k: v for k, v in man.items() if k != "images"}
        calibration.update({
            "method": method,
            "source": "real dermoscopy images only: train split of the ISIC ham10000 and external pools "
                      "(never validation images, never PAD)",
            "balancing": f"FST-balanced: up to {per_group} images per Fitzpatrick group I-VI (ITA estimate of the "
                         f"engine; 'unknown' not drawn), groups V-VI taken {cfg.quantize.rare_group_repeat}x",
            "manifest_file": calib_csv.name,
            "manifest_file_sha256": sha256_file(calib_csv),
        })  # fmt: skip
        quantization = {
            "format": "ONNX QDQ, INT8 static",
            "tool": "onnxruntime.quantization.quant_pre_process + quantize_static (CalibrationDataReader)",
            "weights": "int8, symmetric, per channel",
            "activations": "uint8, asymmetric, per tensor",
            "fp32_parts": "head (/head/*: metadata branch and MLP), the global average pool feeding it, Softmax",
            "calibration_method": method,
            "checked": "no QuantizeLinear/DequantizeLinear in the head; probabilities not stepped in 1/255",
        }
        prov = build_provenance(records=records, calibration=calibration, quantization=quantization, cfg=cfg,
                                teacher_sha256=sha256_file(teacher), teacher_file=teacher.name)  # fmt: skip
        head = stage / f"{name}.head.npz"
        if not head.is_file():
            shutil.copyfile(head_npz_path(teacher), head)
        card = assemble_card(stage=stage, name=name, version=version, onnx_path=onnx_path, head_path=head,
                             threshold=thr["threshold"], metrics=metrics, provenance=prov,
                             limitations=limitations(metrics))  # fmt: skip

        # Move into place (card last); other bundled models are left alone (``compression ship`` replaces them).
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*.json"):
            if old.name != f"{name}.json":
                log(f"note: another card is bundled ({old.name}); leaving it, set MENDICANT_MODEL to choose")
        card_path = move_into_place([onnx_path, head, calib_csv], card, out_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    _verify(card_path, shared, log)
    log(f"first model: {card_path} ({(out_dir / f'{name}.onnx').stat().st_size / 1e6:.1f} MB) "
        f"in {time.time() - t0:.0f}s")
    return card_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compression.bundle_reference", description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--version", default=DEFAULT_VERSION)
    p.add_argument("--out-dir", type=Path, default=None, help="default: resources/models")
    p.add_argument("--method", default="minmax", choices=("minmax", "percentile", "entropy"))
    p.add_argument("--per-group", type=int, default=48)
    p.add_argument("--teacher", type=Path, default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ready-file", default=None, help="write the card path here when done")
    p.add_argument("--card-only", action="store_true",
                   help="keep the bundled ONNX (calibrated with the same settings) and rebuild only its card")
    a = p.parse_args(argv)

    def log(msg: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)

    card = build_first_model(name=a.name, version=a.version, out_dir=a.out_dir, method=a.method,
                             per_group=a.per_group, teacher=a.teacher, threads=a.threads, card_only=a.card_only,
                             log=log)  # fmt: skip
    if a.ready_file:
        Path(a.ready_file).write_text(str(card.resolve()) + "\n", encoding="utf-8")
    print(json.dumps({"card": str(card)}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
