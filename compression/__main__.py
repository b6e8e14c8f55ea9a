"""``python -m compression <stage> [options]``.

Stages: ``data``, ``prune``, ``train``, ``export``, ``quantize``, ``validate``, ``report``, ``ship``
and ``build``, which runs them in that order into ``runs/<name>/`` (``--stages`` picks a subset). ``data``,
``prune``, ``train`` and ``quantize`` skip when their outputs exist and were made with the same configuration, so
``build`` is resumable; ``train`` resumes from its last checkpoint.
Logs go to ``runs/<name>/<stage>.log`` (``train`` also writes ``runs/<name>/train/train.log``) and to stdout.

``ship`` makes the gated INT8 student the one bundled model (card, ONNX, head, calibration manifest in
``[ship] models_dir``, the previous model removed); it refuses with exit status 1, touching nothing, unless
``runs/<name>/validate/validate.json`` says the gate passed for the current ``student_int8.onnx``.

``quantize``, ``export``, ``validate``, ``report`` and ``ship`` live in their own modules
(``compression.quantize``, ``compression.export``, ``compression.validate``, ``compression.report``,
``compression.ship``); each is called as
``run_stage(cfg, run_dir, log=..., argv=[...])`` or, failing that, ``main(argv)``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from mendicant_desktop.core.errors import ConfigError

from .config import Config, load_config
from .fingerprint import STAGE_SECTIONS, check_stage, record_stage

STAGES = ("data", "prune", "train", "export", "quantize", "adapt", "validate", "report", "ship")
#: What ``build`` runs when ``[adapt] enabled``: the adapted teacher, its gate on the gate split, and ship.
ADAPTED_STAGES = ("adapt", "validate", "ship")
EXTERNAL = {"quantize": "compression.quantize", "export": "compression.export",
            "validate": "compression.validate", "report": "compression.report",
            "ship": "compression.ship"}  # fmt: skip


class StageNotImplemented(RuntimeError):
    pass


def _logger(path: Path) -> Callable[[str], None]:
    path.parent.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {msg}"
        print(line, flush=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    return log


def _parse_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_deadline(text: str | None, now: dt.datetime | None = None) -> float | None:
    """``HH:MM`` (UTC, today, or tomorrow if already past) or an ISO time -> epoch seconds."""
    if not text:
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        if len(text) <= 5 and ":" in text:
            h, m = (int(x) for x in text.split(":"))
            t = now.replace(hour=h, minute=m, second=0, microsecond=0)
            if t < now:
                t += dt.timedelta(days=1)
            return t.timestamp()
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()
    except ValueError:
        raise ConfigError(f"--deadline must be HH:MM (UTC) or an ISO time, got {text!r}") from None


def _threads(cfg: Config) -> None:
    import torch

    torch.set_num_threads(cfg.run.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def _teacher(cfg: Config, cache: dict[str, Any]) -> Any:
    if "teacher" not in cache:
        from .prune import build_teacher

        cache["teacher"] = build_teacher(cfg)
    return cache["teacher"]


def _stage_outputs_exist(stage: str, run_dir: Path) -> bool:
    if stage == "data":
        from .data import data_done

        return data_done(run_dir)
    if stage == "prune":
        from .prune import prune_done

        return prune_done(run_dir)
    if stage == "train":
        from .train import train_done

        return train_done(run_dir)
    if stage == "adapt":
        from .adapt import adapt_done

        return adapt_done(run_dir)
    return (run_dir / "quantize" / "quantize.json").is_file()


def run_stage(stage: str, cfg: Config, run_dir: Path, args: argparse.Namespace, cache: dict[str, Any]) -> Any:
    """Run one stage; the fingerprinted ones (data, prune, train, quantize) reuse outputs only when they were
    made with the same configuration (:mod:`compression.fingerprint`), which they record before starting."""
    log = _logger(run_dir / f"{stage}.log")
    if stage not in STAGE_SECTIONS:
        return _run_stage(stage, cfg, run_dir, args, cache, log)
    # A record from an earlier (finished or interrupted) run must match; a missing one is written before the
    # stage starts, so a resumed stage (train checkpoints) is held to the config it started with.
    status = check_stage(cfg, run_dir, stage)
    if status == "legacy":
        if _stage_outputs_exist(stage, run_dir):
            log(f"{stage}: warning: outputs carry no config record (made before fingerprints); reusing them")
        else:
            record_stage(cfg, run_dir, stage)
    return _run_stage(stage, cfg, run_dir, args, cache, log)


def _run_stage(stage: str, cfg: Config, run_dir: Path, args: argparse.Namespace, cache: dict[str, Any],
               log: Callable[[str], None]) -> Any:  # fmt: skip
    if stage == "data":
        from .data import build_data, data_done

        if data_done(run_dir):
            log("data: outputs exist; skipped")
        cache["index"] = build_data(cfg, run_dir, log=log)
        return cache["index"]
    if stage == "adapt":
        from .adapt import adapt_done, run_adapt

        if adapt_done(run_dir):
            log("adapt: outputs exist (adapt/adapt.json) and match the configuration; skipped")
            return None
        return run_adapt(cfg, run_dir, log=log)
    if cfg.adapt.enabled and stage in ("validate", "ship"):
        return _adapted_stage(stage, cfg, run_dir, log, list(args.rest or []))
    if stage in ("prune", "train"):
        from .data import load_index

        index = cache.get("index") or load_index(run_dir)
        cache["index"] = index
        _threads(cfg)
        if stage == "prune":
            from .prune import prune_done, run_prune

            if prune_done(run_dir):
                log("prune: outputs exist; skipped")
                return None
            return run_prune(cfg, run_dir, index, _teacher(cfg, cache), log=log)
        from .train import run_train, train_done

        if train_done(run_dir):
            log("train: outputs exist (train/DONE); skipped")
            return None
        tlog = _logger(run_dir / "train" / "train.log")
        teacher = _teacher(cfg, cache) if cfg.train.kd_weight > 0 else None
        return run_train(cfg, run_dir, index, teacher, log=tlog, resume=not args.no_resume,
                         deadline=parse_deadline(args.deadline))  # fmt: skip
    modname = EXTERNAL[stage]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as exc:
        if exc.name == modname:
            raise StageNotImplemented(f"stage {stage!r} is not implemented yet by {modname}") from None
        raise
    rest = list(args.rest or [])
    if stage == "validate" and getattr(args, "building", False):
        rest.append("--no-fail")  # build: the report documents a failed gate; ship refuses it afterwards
    if hasattr(mod, "run_stage"):
        return mod.run_stage(cfg, run_dir, log=log, argv=rest)
    if hasattr(mod, "main"):
        rc = mod.main(rest)
        if rc:
            raise SystemExit(rc)
        return None
    raise StageNotImplemented(f"stage {stage!r} is not implemented yet by {modname} (no run_stage or main)")


def _adapted_stage(stage: str, cfg: Config, run_dir: Path, log: Callable[[str], None], rest: list[str]) -> Any:
    """validate: the gate of the adapted track (``<run>/validate/gate.json``), or, given a model card or ONNX
    file, that model's gate against its FP32 counterpart rebuilt from the reference network and the model's own
    head (``--out FILE`` to keep the result); ship: bundle the run's model if its gate passed."""
    import json
    import tempfile

    if stage == "validate":
        from .gate import run_gate, write_result

        out = None
        if "--out" in rest:
            k = rest.index("--out")
            out = Path(rest[k + 1])
            rest = rest[:k] + rest[k + 2 :]
        if rest:
            from .adapt import fp32_counterpart, reference_fp32

            model = Path(rest[0])
            card = json.loads(model.with_suffix(".json").read_text(encoding="utf-8")) if model.suffix in (
                ".json", ".onnx") and model.with_suffix(".json").is_file() else None  # fmt: skip
            onnx_path = model.parent / card["file"] if card else model
            split = ((card or {}).get("provenance") or {}).get("splits", {}).get("sha256")
            with tempfile.TemporaryDirectory() as tmp:
                teacher = fp32_counterpart(onnx_path, reference_fp32(log), Path(tmp) / "teacher_fp32.onnx")
                res = run_gate(cfg, onnx_path, teacher, expected_split_sha=split, log=log)
            if out:
                write_result(res, out)
            if not res["gate_passed"]:
                raise SystemExit(1)
            return res
        adapt = json.loads((run_dir / "adapt" / "adapt.json").read_text(encoding="utf-8"))
        res = run_gate(cfg, run_dir / "adapt" / "teacher_int8.onnx", run_dir / "adapt" / "teacher_fp32.onnx",
                       expected_split_sha=adapt["split"]["sha256"], log=log)  # fmt: skip
        write_result(res, out or run_dir / "validate" / "gate.json")
        return res
    from .ship import ShipRefused
    from .ship_adapted import ship_adapted

    try:
        return ship_adapted(cfg, run_dir, log=log)
    except ShipRefused as exc:
        log(f"ship: REFUSED: {exc}")
        raise SystemExit(1) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m compression", description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=(*STAGES, "build"))
    p.add_argument("rest", nargs="*", help="arguments passed to the stage (e.g. validate MODEL)")
    p.add_argument("--config", default=None, help="config TOML (default: compression/config.toml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 (TOML syntax for the value)",
    )
    p.add_argument("--name", default=None, help="run name (overrides run.name)")
    p.add_argument("--stages", default=None, help="build only: comma-separated subset, e.g. data,prune,train")
    p.add_argument("--deadline", default=None, help="train: stop gracefully by this UTC time (HH:MM or ISO)")
    p.add_argument("--no-resume", action="store_true", help="train: ignore an existing checkpoint")
    p.add_argument("--resume", action="store_true", help="train: resume from the last checkpoint (default)")
    p.add_argument(
        "--model",
        default=os.environ.get("MENDICANT_MODEL"),
        help="validate: model card (default $MENDICANT_MODEL)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides: dict[str, Any] = {}
        for item in args.set:
            if "=" not in item:
                raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
            k, v = item.split("=", 1)
            overrides[k.strip()] = _parse_value(v.strip())
        if args.name:
            overrides["run.name"] = args.name
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if args.model and args.stage == "validate" and not args.rest:
        args.rest = [args.model]
    run_dir = cfg.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    if args.stage == "build":
        default = ADAPTED_STAGES if cfg.adapt.enabled else tuple(s for s in STAGES if s != "adapt")
        stages = [s.strip() for s in args.stages.split(",")] if args.stages else list(default)
        bad = [s for s in stages if s not in STAGES]
        if bad:
            print(f"unknown stage(s) in --stages: {bad}", file=sys.stderr)
            return 2
        stages = [s for s in STAGES if s in stages]
    else:
        stages = [args.stage]
    args.building = args.stage == "build"
    cache: dict[str, Any] = {}
    t0 = time.time()
    for s in stages:
        try:
            run_stage(s, cfg, run_dir, args, cache)
        except StageNotImplemented as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 3
        except ConfigError as exc:
            print(f"config error: {exc}", file=sys.stderr)
            return 2
    print(f"{' + '.join(stages)}: done in {time.time() - t0:.0f}s -> {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
