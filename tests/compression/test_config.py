"""compression.config: the committed config loads; every bad value names its key."""

from __future__ import annotations

import pytest

from compression.config import Config, config_to_dict, load_config
from mendicant_desktop.core.errors import ConfigError


def test_committed_config_loads() -> None:
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.gate.max_size_mb == 30.0
    assert cfg.gate.max_auroc_drop == 0.02
    assert cfg.gate.max_gap_increase == 0.005
    assert cfg.targets.isic_external_auroc == 0.90 and cfg.targets.pad_auroc == 0.92
    assert 0 < cfg.prune.target_ratio < 1
    assert config_to_dict(cfg)["train"]["early_stop"]["patience"] == cfg.train.early_stop.patience


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("train.epochs", -1, "train.epochs must be a positive integer, got -1"),
        ("train.epochs", 2.5, "train.epochs must be a positive integer, got 2.5"),
        ("train.lr", 0, "train.lr must be a positive number, got 0"),
        ("prune.target_ratio", 1.5, "prune.target_ratio must be a number strictly between 0 and 1"),
        ("prune.target", "flops", "prune.target must be one of 'macs', 'channels'"),
        ("prune.alpha", -1.0, "prune.alpha must be a non-negative number"),
        ("train.freeze_through", "middle.x", "train.freeze_through must be"),
        ("train.early_stop.patience", 0, "train.early_stop.patience must be a positive integer"),
        ("fairness.privileged", ["VII"], "fairness.privileged must be a non-empty list"),
        ("targets.pad_auroc", 0.3, "targets.pad_auroc must be an AUROC between 0.5 and 1"),
        ("gate.max_size_mb", "big", "gate.max_size_mb must be a positive number, got 'big'"),
        ("run.name", "../x", "run.name must be a non-empty folder name"),
        ("train.feature_dihedral", 1, "train.feature_dihedral must be true or false"),
    ],
)
def test_bad_values_name_the_key(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides={key: value})
    assert message in str(err.value)


def test_unknown_key_and_overlap() -> None:
    with pytest.raises(ConfigError, match="unknown key train.epoch"):
        load_config(overrides={"train.epoch": 3})
    with pytest.raises(ConfigError, match="must not overlap"):
        load_config(overrides={"fairness.privileged": ["I", "III"]})


def test_bad_file(tmp_path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[train\nepochs = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_config_is_frozen() -> None:
    cfg = load_config()
    with pytest.raises(AttributeError):
        cfg.train.epochs = 3  # type: ignore[misc]
