"""Stage fingerprints: a stage's outputs are reused only if they were made with the same configuration.

``build`` is resumable because every stage skips when its outputs exist. Without a check, editing
``config.toml`` (say ``train.lr``) and re-running ``build`` would silently reuse a student trained with the old
value. Each stage therefore records the configuration sections it depends on, *including its upstream
stages'* (a new prune invalidates training), in ``<run>/<stage>/config.json``. A later run compares:

* same sections -> the stage may skip;
* different -> :class:`StageConfigMismatch` names the keys that differ and how to proceed (a new ``--name``, or
  deleting the stage folder); nothing is overwritten or silently reused;
* no record (a run made before fingerprints existed) -> reused with a warning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mendicant_desktop.core.errors import ConfigError

from .config import Config

__all__ = [
    "STAGE_SECTIONS",
    "StageConfigMismatch",
    "stage_config",
    "fingerprint",
    "check_stage",
    "record_stage",
]

#: Config keys each stage depends on, cumulative along the pipeline (``run.threads`` and ``run.name`` never
#: change results; the seed does).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    "data": ("run.seed", "data"),
    "prune": ("run.seed", "data", "model", "prune", "fairness"),
    "train": ("run.seed", "data", "model", "prune", "fairness", "train"),
    "quantize": ("run.seed", "data", "model", "prune", "fairness", "train", "quantize"),
    "adapt": ("run.seed", "data.shared_data", "adapt"),
}
RECORD = "config.json"
#: Keys added after runs had been recorded, left out of the fingerprint while their switch is off, so an older
#: run whose behaviour they do not change still matches: ``{switch: (off value, keys dropped while off)}``.
INERT_WHEN_OFF: dict[str, tuple[Any, tuple[str, ...]]] = {
    "train.rank_weight": (0.0, ("train.rank_weight", "train.rank_batch")),
}


class StageConfigMismatch(ConfigError):
    """A stage's existing outputs were made with a different configuration."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def stage_config(cfg: Config, stage: str) -> dict[str, Any]:
    """The flattened config keys ``stage`` depends on (``{"train.lr": 0.0003, ...}``)."""
    flat = _flatten(cfg.to_dict())
    for switch, (off, dropped) in INERT_WHEN_OFF.items():
        if switch in flat and flat[switch] == off:
            for k in dropped:
                flat.pop(k, None)
    keys = STAGE_SECTIONS[stage]
    return {k: v for k, v in sorted(flat.items()) if any(k == s or k.startswith(s + ".") for s in keys)}


def fingerprint(cfg: Config, stage: str) -> str:
    return hashlib.sha256(
        json.dumps(stage_config(cfg, stage), sort_keys=True, default=str).encode()
    ).hexdigest()


def _record_path(run_dir: str | Path, stage: str) -> Path:
    return Path(run_dir) / stage / RECORD


def record_stage(cfg: Config, run_dir: str | Path, stage: str) -> Path:
    """Write the stage's config record (call when the stage has finished)."""
    p = _record_path(run_dir, stage)
    p.parent.mkdir(parents=True, exist_ok=True)
    payload = {"fingerprint": fingerprint(cfg, stage), "config": stage_config(cfg, stage)}
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    tmp.replace(p)
    return p


def check_stage(cfg: Config, run_dir: str | Path, stage: str) -> str:
    """``"match"``, ``"legacy"`` (no record) or raises :class:`StageConfigMismatch` naming the differing keys."""
    p = _record_path(run_dir, stage)
    if not p.is_file():
        return "legacy"
    old = json.loads(p.read_text(encoding="utf-8"))
    if old.get("fingerprint") == fingerprint(cfg, stage):
        return "match"
    now = json.loads(json.dumps(stage_config(cfg, stage), default=str))
    was = old.get("config", {})
    diff = [f"{k}: {was.get(k, '<absent>')!r} -> {now.get(k, '<absent>')!r}"
            for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]  # fmt: skip
    raise StageConfigMismatch(
        f"{Path(run_dir) / stage} was made with a different configuration ({'; '.join(diff[:8])}"
        f"{' ...' if len(diff) > 8 else ''}); use another run name (--name) or delete that folder to redo it"
    )
