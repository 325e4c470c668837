"""Learning-rate schedules driven by training *progress*, so an epoch budget and a time budget anneal alike.

``progress = max(e, (t - g) / (1 - g))`` in [0, 1], updated every optimiser step, where ``e`` = epochs done /
epochs planned, ``t`` = seconds trained / (``max_minutes`` * 60) and ``g`` = ``CLOCK_GRACE``. ``poly`` and
``cosine`` are functions of progress, so with ``max_minutes`` the LR reaches its floor when the time budget runs
out even if far fewer epochs fit than ``epochs`` says.

Why the grace: the clock may only steer the LR of a run that the budget actually limits. With a plain
``max(e, t)`` the first steps of every run (``e`` still ~0, ``t`` a few milliseconds) took their LR from the
clock, so two runs of the same config with ``training.deterministic: true`` differed from the first step on,
even when the budget was only a safety cap that never came near (quickstart, 2 epochs, two processes: epoch-1
loss 0.844031 vs 0.842721). The time term now wins only once the run is behind its epoch plan by more than
``g`` of the budget; a run that finishes its epochs well inside the budget never reads the clock for its LR
and is reproducible bit for bit. A run the budget does limit still anneals to 0 exactly when it runs out.

Nothing but the plan (kind, epochs, budget, base LRs) and the plateau counters is state: a resumed run recomputes
progress from its checkpointed epoch and elapsed time and continues on the same curve.

Semantics of extending a finished run (``resume: true`` with a larger ``epochs``): the plan is re-made for the
new total, so the LR continues from what the *new* plan has at the current epoch (a warm restart for ``poly``
and ``cosine``) and anneals to its floor by the new end. Resuming with the same ``epochs`` keeps the old plan
exactly.

Kinds:
    ``poly``: ``lr = base * (1 - progress) ** 0.9`` (nnU-Net's schedule).
    ``cosine``: ``lr = base * 0.5 * (1 + cos(pi * progress))``.
    ``plateau``: ``lr = base * 0.5 ** n`` where ``n`` counts validations without a new best mean Dice, in runs of
        ``PLATEAU_PATIENCE`` (progress does not matter).
    ``none``: constant ``base``.
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer

from medseg.errors import ConfigError

KINDS = ("poly", "cosine", "plateau", "none")
POLY_POWER = 0.9
#: Validations without improvement before ``plateau`` halves the LR.
PLATEAU_PATIENCE = 3
PLATEAU_FACTOR = 0.5
#: An improvement of the mean validation Dice smaller than this does not reset the plateau counter.
PLATEAU_THRESHOLD = 1e-4
#: Share of the time budget the clock may run ahead of the epoch plan before it takes over the LR (see above):
#: 12 s of a 10-minute budget, far more than the first step of any run takes, far less than a budget-bound run
#: trains, so the LR curve of such a run is unchanged but for its first 2 %.
CLOCK_GRACE = 0.02


class LRSchedule:
    """Sets the optimiser's LR from training progress (poly/cosine) or validation Dice (plateau).

    Args:
        optimizer: Its param groups' current ``lr`` are taken as the base LRs.
        kind: ``poly``, ``cosine``, ``plateau`` or ``none``.
        total_epochs: Epochs planned (``training.epochs``).
        max_seconds: Wall-clock budget in seconds (``training.max_minutes * 60``) or ``None``.

    Raises:
        ConfigError: Unknown kind or a non-positive plan.
    """

    def __init__(self, optimizer: Optimizer, kind: str, *, total_epochs: int, max_seconds: float | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"training.scheduler: expected one of {', '.join(KINDS)}, got {kind!r}")
        if total_epochs < 1 or (max_seconds is not None and max_seconds <= 0):
            raise ConfigError(f"training: epochs must be >= 1 and max_minutes > 0, got {total_epochs}, {max_seconds}")
        self.optimizer = optimizer
        self.kind = kind
        self.total_epochs = int(total_epochs)
        self.max_seconds = None if max_seconds is None else float(max_seconds)
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.progress = 0.0
        self.plateau_best = -math.inf
        self.plateau_stale = 0
        self.plateau_scale = 1.0

    def compute_progress(self, epochs_done: float, elapsed_seconds: float) -> float:
        """``max(epoch fraction, time fraction past the grace)`` clipped to [0, 1] (see the module docstring)."""
        p = epochs_done / self.total_epochs
        if self.max_seconds is not None:
            p = max(p, (elapsed_seconds / self.max_seconds - CLOCK_GRACE) / (1.0 - CLOCK_GRACE))
        return min(max(p, 0.0), 1.0)

    def factor(self, progress: float) -> float:
        """LR multiplier at ``progress`` (for ``plateau`` the current reduction)."""
        if self.kind == "poly":
            return (1.0 - progress) ** POLY_POWER
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "plateau":
            return self.plateau_scale
        return 1.0

    def step(self, epochs_done: float, elapsed_seconds: float) -> float:
        """Sets the LR for the next optimiser step.

        Args:
            epochs_done: Fractional epochs finished (epoch + batch / batches per epoch).
            elapsed_seconds: Training seconds so far, including earlier sessions of a resumed run.

        Returns:
            The LR of the first param group.
        """
        self.progress = self.compute_progress(epochs_done, elapsed_seconds)
        f = self.factor(self.progress)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * f
        return float(self.optimizer.param_groups[0]["lr"])

    def step_validation(self, mean_dice: float) -> None:
        """Feeds a validation result (only ``plateau`` uses it)."""
        if self.kind != "plateau":
            return
        if mean_dice > self.plateau_best + PLATEAU_THRESHOLD:
            self.plateau_best = mean_dice
            self.plateau_stale = 0
            return
        self.plateau_stale += 1
        if self.plateau_stale >= PLATEAU_PATIENCE:
            self.plateau_scale *= PLATEAU_FACTOR
            self.plateau_stale = 0

    @property
    def lr(self) -> float:
        """Current LR of the first param group."""
        return float(self.optimizer.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        """Plain-typed state (``weights_only``-safe)."""
        return {
            "kind": self.kind,
            "total_epochs": self.total_epochs,
            "max_seconds": self.max_seconds,
            "base_lrs": list(self.base_lrs),
            "progress": self.progress,
            "plateau_best": self.plateau_best if math.isfinite(self.plateau_best) else None,
            "plateau_stale": self.plateau_stale,
            "plateau_scale": self.plateau_scale,
        }

    def load_state_dict(self, state: dict[str, Any], *, replan: bool = True) -> None:
        """Restores a saved state.

        Args:
            state: From :meth:`state_dict`.
            replan: Keep this object's ``total_epochs``/``max_seconds`` (the current config: extending a run
                re-plans it) instead of the saved ones. Base LRs always come from the saved state, so a resumed
                run anneals from the same starting LR.

        Raises:
            ConfigError: If the saved schedule is of another kind than the configured one.
        """
        if state["kind"] != self.kind:
            raise ConfigError(
                f"training.scheduler is '{self.kind}' but the checkpoint was trained with '{state['kind']}'; "
                "resume with the same scheduler"
            )
        if not replan:
            self.total_epochs = int(state["total_epochs"])
            self.max_seconds = state["max_seconds"]
        self.base_lrs = [float(v) for v in state["base_lrs"]]
        self.progress = float(state["progress"])
        best = state.get("plateau_best")
        self.plateau_best = -math.inf if best is None else float(best)
        self.plateau_stale = int(state["plateau_stale"])
        self.plateau_scale = float(state["plateau_scale"])
