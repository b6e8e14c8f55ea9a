"""Stage fingerprints: reuse only outputs made with the same configuration."""

from __future__ import annotations

import pytest

from compression.config import load_config
from compression.fingerprint import StageConfigMismatch, check_stage, fingerprint, record_stage, stage_config


def test_sections_are_cumulative_and_ignore_threads() -> None:
    base = load_config(None)
    assert "train.lr" in stage_config(base, "train") and "train.lr" not in stage_config(base, "prune")
    assert "prune.target_ratio" in stage_config(base, "quantize")
    threads = load_config(None, {"run.threads": 1, "run.name": "other"})
    for stage in ("data", "prune", "train", "quantize"):
        assert fingerprint(threads, stage) == fingerprint(base, stage)
    lr = load_config(None, {"train.lr": 0.001})
    assert fingerprint(lr, "train") != fingerprint(base, "train")
    assert fingerprint(lr, "prune") == fingerprint(base, "prune")
    assert fingerprint(lr, "quantize") != fingerprint(base, "quantize")  # downstream of train


def test_check_stage_match_legacy_and_mismatch(tmp_path) -> None:
    cfg = load_config(None)
    assert check_stage(cfg, tmp_path, "train") == "legacy"
    record_stage(cfg, tmp_path, "train")
    assert check_stage(cfg, tmp_path, "train") == "match"
    changed = load_config(None, {"train.epochs": 3, "prune.target_ratio": 0.7})
    with pytest.raises(StageConfigMismatch) as exc:
        check_stage(changed, tmp_path, "train")
    msg = str(exc.value)
    assert "train.epochs: 14 -> 3" in msg and "prune.target_ratio: 0.5 -> 0.7" in msg and "--name" in msg


def test_rank_loss_keys_are_inert_while_off(tmp_path) -> None:
    """Runs recorded before ``train.rank_*`` existed still match while the loss is off; switching it on does not."""
    base = load_config(None)
    assert base.train.rank_weight == 0.0
    assert not any(k.startswith("train.rank_") for k in stage_config(base, "train"))
    assert fingerprint(load_config(None, {"train.rank_batch": 64}), "train") == fingerprint(base, "train")
    on = load_config(None, {"train.rank_weight": 1.0})
    assert stage_config(on, "train")["train.rank_batch"] == 16
    record_stage(base, tmp_path, "train")
    with pytest.raises(StageConfigMismatch, match="train.rank_weight: '<absent>' -> 1.0"):
        check_stage(on, tmp_path, "train")
