"""training.val_every: fixed intervals, and auto, which thins validation out when it costs more than a fifth of the
time (CT-sized slices) and never for short validations; the trainer validates on that schedule and after the last
epoch."""

from __future__ import annotations

from pathlib import Path

import pytest

from medseg.training import validation_schedule
from medseg.training.validation_schedule import MIN_SECONDS, ValidationSchedule


def test_fixed_interval() -> None:
    schedule = ValidationSchedule(3)
    assert [e for e in range(1, 10) if schedule.due(e)] == [3, 6, 9]
    assert schedule.record(3, train_seconds=10.0, val_seconds=100.0) is None  # fixed: costs change nothing
    assert schedule.interval == 3
    with pytest.raises(ValueError, match="val_every"):
        ValidationSchedule(0)


def test_auto_keeps_every_epoch_while_validation_is_cheap() -> None:
    schedule = ValidationSchedule("auto")
    assert schedule.due(1)
    # A quarter of the training time, or anything under MIN_SECONDS, keeps validating every epoch.
    assert schedule.record(1, train_seconds=100.0, val_seconds=25.0) is None
    assert schedule.due(2)
    assert schedule.record(2, train_seconds=1.0, val_seconds=MIN_SECONDS - 0.1) is None
    assert schedule.due(3)


def test_auto_thins_out_expensive_validation_and_recovers() -> None:
    schedule = ValidationSchedule("auto")
    # The synthetic CT case: validation as long as the epoch -> every 4 epochs (4 x 25 s of training per 25 s).
    assert schedule.record(1, train_seconds=25.0, val_seconds=25.0) == 4
    assert [e for e in range(2, 10) if schedule.due(e)] == [5, 6, 7, 8, 9]  # due from epoch 5 on, until recorded
    assert schedule.record(5, train_seconds=25.0, val_seconds=60.0) == 10
    assert not schedule.due(14) and schedule.due(15)
    assert schedule.record(15, train_seconds=25.0, val_seconds=5.0) == 1  # cheaper again: every epoch
    assert schedule.due(16)


@pytest.mark.slow
def test_trainer_validates_on_the_auto_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the thresholds at zero, any validation is 'expensive': the first epoch and the last are validated,
    none between (whatever the machine's speed), and best.pt comes from those."""
    from medseg.training import train
    from tests.test_training import make_cfg

    monkeypatch.setattr(validation_schedule, "MIN_SECONDS", 0.0)
    monkeypatch.setattr(validation_schedule, "SHARE", 1e-12)
    root = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"
    cfg = make_cfg(root, tmp_path, model={"base_features": 4}, data={"max_cases": 6}, training={"epochs": 4})
    assert cfg.training.val_every == "auto"
    result = train(cfg)
    validated = [r["epoch"] for r in result.history if r["val_dice_mean"] is not None]
    assert validated == [1, 4]
    assert result.best_epoch in (1, 4)
