"""When to validate: every ``training.val_every`` epochs, or ``auto``: as often as a fifth of the time allows.

Validation predicts whole validation volumes, training steps on patches. On small slices (hippocampus, LA2018)
a validation costs a few percent of an epoch; on CT-sized slices it can cost more than the epoch itself (one
synthetic 512 x 512 x 60 CT validation case took as long as an epoch over five training cases on 144 x 144
patches, 2 CPU cores), so with a time budget half of it would go to measuring instead of training.

``auto`` validates after the first epoch and measures both; while a validation takes at most a quarter of an
epoch's training time (a fifth of the time together), it validates after every epoch, otherwise every ``k``
epochs with ``k`` the smallest interval that keeps validation within a fifth of the time. Validations shorter
than :data:`MIN_SECONDS` never thin out (small runs, and the test suite, validate every epoch on any machine).
The last epoch (epochs done, time budget spent) is always validated by the trainer.
"""

from __future__ import annotations

import math
from typing import Literal

#: Share of training time that validation may take under ``auto`` (a fifth of the total).
SHARE = 0.25
#: Validations shorter than this (seconds) run after every epoch whatever the share.
MIN_SECONDS = 10.0


class ValidationSchedule:
    """Decides after which epochs to validate.

    Args:
        val_every: ``training.val_every``: a fixed interval in epochs, or ``"auto"``.

    Raises:
        ValueError: For an interval below 1.
    """

    def __init__(self, val_every: int | Literal["auto"]) -> None:
        if val_every != "auto" and int(val_every) < 1:
            raise ValueError(f"val_every must be >= 1 or 'auto', got {val_every!r}")
        self.auto = val_every == "auto"
        self.interval = 1 if self.auto else int(val_every)
        self._last_validated = 0

    def due(self, epoch: int) -> bool:
        """Whether to validate after ``epoch`` (1-based, epochs done so far), not counting the last epoch."""
        if self.auto:
            return epoch - self._last_validated >= self.interval
        return epoch % self.interval == 0

    def record(self, epoch: int, train_seconds: float, val_seconds: float) -> int | None:
        """Notes a validation after ``epoch``; under ``auto`` updates the interval from its cost.

        Args:
            epoch: The epoch it followed (1-based).
            train_seconds: Training time of one epoch (the last one).
            val_seconds: Time the validation took.

        Returns:
            The new interval when it changed, else ``None``.
        """
        self._last_validated = epoch
        if not self.auto:
            return None
        interval = 1
        if val_seconds >= MIN_SECONDS and train_seconds > 0:
            interval = max(1, math.ceil(val_seconds / (SHARE * train_seconds)))
        changed = interval != self.interval
        self.interval = interval
        return interval if changed else None
