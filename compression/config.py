"""The compression pipeline's one configuration: frozen dataclasses loaded from ``compression/config.toml``.

Every value is checked on load; a bad one raises :class:`~mendicant_desktop.core.errors.ConfigError` whose
message names the dotted key, e.g. ``train.epochs must be a positive integer, got -1``. Unknown keys are
errors as well. ``load_config(path, overrides={"train.epochs": 1})`` applies dotted overrides (tests, CLI).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from mendicant_desktop.core.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG",
    "FST_GROUPS",
    "FREEZE_STAGES_HELP",
    "Config",
    "RunConfig",
    "DataConfig",
    "ModelConfig",
    "PruneConfig",
    "FairnessConfig",
    "TrainConfig",
    "EarlyStopConfig",
    "QuantizeConfig",
    "GateConfig",
    "TargetsConfig",
    "ShipConfig",
    "AdaptConfig",
    "load_config",
    "config_from_dict",
    "config_to_dict",
]

DEFAULT_CONFIG = Path(__file__).with_name("config.toml")
FST_GROUPS = ("I", "II", "III", "IV", "V", "VI")
FREEZE_STAGES_HELP = '"none", "stem", "entry.K", "middle.K" or "block13"'

Check = Callable[[str, Any], Any]


# --------------------------------------------------------------------------------------------------
# Value checks: each takes (dotted key, value) and returns the normalised value or raises ConfigError
# --------------------------------------------------------------------------------------------------


def _fail(key: str, what: str, value: Any) -> ConfigError:
    return ConfigError(f"{key} must be {what}, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(float(v))


def pos_int(key: str, v: Any) -> int:
    if not _is_int(v) or v <= 0:
        raise _fail(key, "a positive integer", v)
    return v


def nonneg_int(key: str, v: Any) -> int:
    if not _is_int(v) or v < 0:
        raise _fail(key, "a non-negative integer", v)
    return v


def pos_float(key: str, v: Any) -> float:
    if not _is_num(v) or v <= 0:
        raise _fail(key, "a positive number", v)
    return float(v)


def nonneg_float(key: str, v: Any) -> float:
    if not _is_num(v) or v < 0:
        raise _fail(key, "a non-negative number", v)
    return float(v)


def unit_open(key: str, v: Any) -> float:
    if not _is_num(v) or not 0 < v < 1:
        raise _fail(key, "a number strictly between 0 and 1", v)
    return float(v)


def unit_closed(key: str, v: Any) -> float:
    if not _is_num(v) or not 0 <= v <= 1:
        raise _fail(key, "a number between 0 and 1", v)
    return float(v)


def auroc_value(key: str, v: Any) -> float:
    if not _is_num(v) or not 0.5 <= v <= 1:
        raise _fail(key, "an AUROC between 0.5 and 1", v)
    return float(v)


def boolean(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _fail(key, "true or false", v)
    return v


def string(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _fail(key, "a string", v)
    return v


def name(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v or any(c in v for c in "/\\:") or v in (".", ".."):
        raise _fail(key, "a non-empty folder name without path separators", v)
    return v


_FILE_STEM_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def file_stem(key: str, v: Any) -> str:
    if not isinstance(v, str) or not v or v.startswith(".") or not set(v) <= _FILE_STEM_CHARS:
        raise _fail(key, "a non-empty file name of letters, digits, '.', '_' or '-' (not starting with '.')", v)
    return v


def version_str(key: str, v: Any) -> str:
    parts = v.split("+", 1)[0].split("-", 1)[0].split(".") if isinstance(v, str) else []
    if len(parts) != 3 or not all(p.isdigit() for p in parts) or not set(v) <= _FILE_STEM_CHARS | {"+"}:
        raise _fail(key, 'a version "MAJOR.MINOR.PATCH" (optionally with a -pre or +build suffix)', v)
    return v


def one_of(*choices: str) -> Check:
    def check(key: str, v: Any) -> str:
        if v not in choices:
            raise _fail(key, "one of " + ", ".join(repr(c) for c in choices), v)
        return v

    return check


def str_list(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
        raise _fail(key, "a list of non-empty strings", v)
    return tuple(v)


def fst_list(key: str, v: Any) -> tuple[str, ...]:
    items = str_list(key, v)
    bad = [s for s in items if s not in FST_GROUPS]
    if bad or not items or len(set(items)) != len(items):
        raise _fail(key, "a non-empty list of distinct Fitzpatrick types from " + "/".join(FST_GROUPS), v)
    return items


def dataset_list(key: str, v: Any) -> tuple[str, ...]:
    items = str_list(key, v) if v != [] else ()
    bad = [s for s in items if s not in ("isic", "pad")]
    if bad or len(set(items)) != len(items):
        raise _fail(key, 'a list of distinct data sets from "isic", "pad"', v)
    return items


#: Source diagnosis codes of ``../shared/data`` (ISIC ``dx`` and PAD ``dx``).
DX_CODES: tuple[str, ...] = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "ACK", "NEV", "SEK")


def dx_list(key: str, v: Any) -> tuple[str, ...]:
    items = str_list(key, v) if v != [] else ()
    bad = [s for s in items if s not in DX_CODES]
    if bad or len(set(items)) != len(items):
        raise _fail(key, "a list of distinct diagnosis codes from " + "/".join(DX_CODES), v)
    return items


def freeze_stage(key: str, v: Any) -> str:
    ok = isinstance(v, str) and (
        v in ("none", "stem", "block13")
        or (v.startswith(("entry.", "middle.")) and v.split(".", 1)[1].isdigit())
    )
    if not ok:
        raise _fail(key, FREEZE_STAGES_HELP, v)
    return v


def _f(check: Check, default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    if default is dataclasses.MISSING:
        return field(metadata={"check": check}, **kw)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"check": check})
    return field(default=default, metadata={"check": check})


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    name: str = _f(name, "main")
    runs_dir: str = _f(string, "runs")
    seed: int = _f(nonneg_int, 20261127)
    threads: int = _f(pos_int, 2)


@dataclass(frozen=True)
class DataConfig:
    shared_data: str = _f(string, "")
    isic_val_fraction: float = _f(unit_open, 0.30)
    pad_val_fraction: float = _f(unit_open, 0.35)
    max_images: int = _f(nonneg_int, 0)


@dataclass(frozen=True)
class ModelConfig:
    teacher: str = _f(one_of("reference", "tiny"), "reference")
    tiny_width_mult: float = _f(unit_closed, 0.0625)
    tiny_n_middle: int = _f(pos_int, 2)


@dataclass(frozen=True)
class PruneConfig:
    target: str = _f(one_of("macs", "channels"), "macs")
    target_ratio: float = _f(unit_open, 0.5)
    steps: int = _f(pos_int, 4)
    alpha: float = _f(nonneg_float, 1.0)
    beta: float = _f(nonneg_float, 1.0)
    gamma: float = _f(nonneg_float, 0.5)
    batch_size: int = _f(pos_int, 8)
    batches_per_group: int = _f(pos_int, 2)
    max_group_ratio: float = _f(unit_open, 0.75)
    min_channels: int = _f(pos_int, 8)
    ignore: tuple[str, ...] = _f(str_list, ("head",))
    keep_feature_channels: bool = _f(boolean, True)
    bn_recalibration_images: int = _f(nonneg_int, 192)


@dataclass(frozen=True)
class FairnessConfig:
    privileged: tuple[str, ...] = _f(fst_list, ("I", "II"))
    unprivileged: tuple[str, ...] = _f(fst_list, ("III", "IV", "V", "VI"))
    min_group_n: int = _f(pos_int, 30)


@dataclass(frozen=True)
class EarlyStopConfig:
    patience: int = _f(pos_int, 4)
    min_epochs: int = _f(pos_int, 3)
    max_fst_gap: float = _f(unit_closed, 0.15)
    gap_tolerance: float = _f(unit_closed, 0.05)
    gate_relative: bool = _f(boolean, False)


@dataclass(frozen=True)
class TrainConfig:
    freeze_through: str = _f(freeze_stage, "middle.5")
    epochs: int = _f(pos_int, 14)
    batch_size: int = _f(pos_int, 32)
    lr: float = _f(pos_float, 3e-4)
    head_lr_mult: float = _f(pos_float, 3.0)
    weight_decay: float = _f(nonneg_float, 1e-4)
    warmup_epochs: float = _f(nonneg_float, 0.5)
    temperature: float = _f(pos_float, 2.0)
    kd_weight: float = _f(nonneg_float, 0.3)
    ce_weight: float = _f(nonneg_float, 1.0)
    malignant_weight: float = _f(nonneg_float, 1.0)
    label_smoothing: float = _f(unit_closed, 0.05)
    balance: str = _f(one_of("class", "domain_class"), "domain_class")
    train_views: int = _f(pos_int, 2)
    color_jitter: float = _f(unit_closed, 0.08)
    feature_dihedral: bool = _f(boolean, True)
    kd_all_views: bool = _f(boolean, False)
    teacher_on_val: bool = _f(boolean, False)
    meta_dropout: float = _f(unit_closed, 0.5)
    kd_datasets: tuple[str, ...] = _f(dataset_list, ("isic", "pad"))
    ce_skip_dx: tuple[str, ...] = _f(dx_list, ())
    rank_weight: float = _f(nonneg_float, 0.0)
    rank_batch: int = _f(pos_int, 16)
    time_budget_minutes: float = _f(pos_float, 75.0)
    cache_dtype: str = _f(one_of("float16", "float32"), "float16")
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)


@dataclass(frozen=True)
class QuantizeConfig:
    calibration_per_group: int = _f(pos_int, 32)
    rare_group_repeat: int = _f(pos_int, 2)
    per_channel: bool = _f(boolean, True)
    head_fp32: bool = _f(boolean, True)
    method: str = _f(one_of("minmax", "percentile", "entropy"), "minmax")
    equalize: float = _f(unit_closed, 0.0)


@dataclass(frozen=True)
class GateConfig:
    max_size_mb: float = _f(pos_float, 30.0)
    max_latency_ratio: float = _f(pos_float, 0.5)
    max_auroc_drop: float = _f(unit_closed, 0.02)
    max_gap_increase: float = _f(unit_closed, 0.005)


@dataclass(frozen=True)
class TargetsConfig:
    size_mb: float = _f(pos_float, 15.0)
    macs_ratio: float = _f(unit_open, 0.60)
    latency_ratio: float = _f(pos_float, 0.25)
    isic_external_auroc: float = _f(auroc_value, 0.90)
    pad_auroc: float = _f(auroc_value, 0.92)
    fst_group_auroc: float = _f(auroc_value, 0.85)
    fst_gap: float = _f(unit_closed, 0.05)
    fst_min_n: int = _f(pos_int, 30)
    pad_fst_labelled_auroc: float = _f(auroc_value, 0.85)
    fitz_auroc: float = _f(auroc_value, 0.88)
    fitz_group_auroc: float = _f(auroc_value, 0.85)
    fitz_gap: float = _f(unit_closed, 0.05)
    latency_ratio_avx2: float = _f(pos_float, 1 / 3)


def pos_float_list(key: str, v: Any) -> tuple[float, ...]:
    if not isinstance(v, list) or not v or not all(_is_num(x) and x > 0 for x in v):
        raise _fail(key, "a non-empty list of positive numbers", v)
    return tuple(float(x) for x in v)


def view_list(key: str, v: Any) -> tuple[str, ...]:
    items = str_list(key, v)
    if not items or items[0] != "id" or not set(items) <= {"id", "hflip", "vflip"} or len(set(items)) != len(items):
        raise _fail(key, 'a list of distinct views starting with "id", from "id", "hflip", "vflip"', v)
    return items


def fp32_keep_list(key: str, v: Any) -> tuple[str, ...]:
    return str_list(key, v) if v != [] else ()


@dataclass(frozen=True)
class AdaptConfig:
    """The adapted teacher (compression.adapt) and its three-way split. ``enabled``: ``build`` runs
    data split -> adapt -> validate (gate) -> report -> ship for the adapted teacher's INT8 model."""

    enabled: bool = _f(boolean, False)
    select_fraction: float = _f(unit_open, 0.20)
    gate_fraction: float = _f(unit_open, 0.30)
    split_seed: int = _f(nonneg_int, 20261201)
    train_views: tuple[str, ...] = _f(view_list, ("id", "hflip"))
    c_malignancy: tuple[float, ...] = _f(pos_float_list, (0.001, 0.003, 0.01))
    c_classes: tuple[float, ...] = _f(pos_float_list, (0.001, 0.003, 0.01))
    min_sensitivity: float = _f(unit_open, 0.85)
    calibration_per_group: int = _f(pos_int, 24)
    reduce_range: bool = _f(boolean, True)
    activation_type: str = _f(one_of("uint8", "int8"), "uint8")
    method: str = _f(one_of("minmax", "percentile", "entropy", "image_quantile"), "minmax")
    range_quantile: float = _f(unit_open, 0.75)  # image_quantile: quantile over images of each image's max
    keep_fp32: tuple[str, ...] = _f(fp32_keep_list, ())
    int8_aware: bool = _f(boolean, True)
    check_inputs: int = _f(pos_int, 6)
    check_tolerance_floor: float = _f(unit_open, 0.03)
    reference_images: int = _f(pos_int, 240)


@dataclass(frozen=True)
class ShipConfig:
    name: str = _f(file_stem, "mendicant-xception-fairprune-int8")
    version: str = _f(version_str, "0.2.0")
    models_dir: str = _f(string, "")
    #: What the adapted track's ship does with a complete gate result (every limit present, this split, this file)
    #: that missed a limit: "refuse", or "ship_teacher_int8" (issue 12: when no rung passes, the INT8 adapted
    #: teacher ships and the card says which limits it missed). An incomplete or mismatched gate always refuses.
    on_failed_gate: str = _f(one_of("refuse", "ship_teacher_int8"), "refuse")


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    ship: ShipConfig = field(default_factory=ShipConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    source: str = field(default="", compare=False)

    def run_dir(self, repo_root: str | Path | None = None) -> Path:
        """``<runs_dir>/<name>``; a relative runs_dir is taken from the repository root."""
        base = Path(self.run.runs_dir).expanduser()
        if not base.is_absolute():
            base = Path(repo_root) if repo_root is not None else Path(__file__).resolve().parents[1]
            base = base / self.run.runs_dir
        return base / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return config_to_dict(self)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def _build(cls: type, raw: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a table, got {raw!r}")
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"unknown key {prefix + unknown[0]!s} (known: {', '.join(sorted(known))})")
    kwargs: dict[str, Any] = {}
    for fname, f in known.items():
        key = prefix + fname
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub_cls = _SECTION_TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
            kwargs[fname] = _build(sub_cls, raw.get(fname, {}), key + ".")
            continue
        if fname in raw:
            kwargs[fname] = f.metadata["check"](key, raw[fname])
    obj = cls(**kwargs)
    _cross_checks(obj, prefix)
    return obj


def _cross_checks(obj: Any, prefix: str) -> None:
    if isinstance(obj, FairnessConfig):
        both = set(obj.privileged) & set(obj.unprivileged)
        if both:
            raise ConfigError(
                f"{prefix}privileged and {prefix}unprivileged must not overlap, both contain {sorted(both)}"
            )
    if isinstance(obj, TrainConfig) and obj.batch_size < 2:
        raise ConfigError(
            f"{prefix}batch_size must be at least 2 (BatchNorm in train mode), got {obj.batch_size}"
        )


_SECTION_TYPES: dict[str, type] = {
    c.__name__: c
    for c in (RunConfig, DataConfig, ModelConfig, PruneConfig, FairnessConfig, TrainConfig, EarlyStopConfig,
              QuantizeConfig, GateConfig, TargetsConfig, ShipConfig, AdaptConfig)
}  # fmt: skip


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"{dotted}: {p} is not a table")
            node = nxt
        node[parts[-1]] = list(value) if isinstance(value, tuple) else value
    return raw


def config_from_dict(raw: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> Config:
    """Validate a raw (TOML-shaped) mapping into a :class:`Config`."""
    raw = _apply_overrides(dict(raw), overrides or {})
    return _build(Config, raw, "")


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Load and validate ``path`` (default: ``compression/config.toml``) with optional dotted overrides."""
    p = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        with open(p, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {p} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {p} is not valid TOML: {exc}") from None
    cfg = config_from_dict(raw, overrides)
    return dataclasses.replace(cfg, source=str(p))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain JSON/TOML-able dict of a config (tuples become lists)."""
    out: dict[str, Any] = {}
    for f in fields(cfg):
        if f.name == "source":
            continue
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            out[f.name] = config_to_dict(v)
        elif isinstance(v, tuple):
            out[f.name] = list(v)
        else:
            out[f.name] = v
    return out
