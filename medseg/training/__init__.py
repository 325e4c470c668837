"""Training: the trainer loop, checkpoints (save/resume), LR schedules, logs, distributed helpers.

``from medseg.training import train`` loads torch, MONAI and the data stack; ``load_checkpoint`` and
``save_checkpoint`` only torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medseg.models.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, save_checkpoint

if TYPE_CHECKING:
    from medseg.training.trainer import PlanResult, TrainResult, check_and_plan, train

_LAZY = {name: "medseg.training.trainer" for name in ("train", "TrainResult", "check_and_plan", "PlanResult")}


def __getattr__(name: str) -> Any:
    # The trainer pulls in MONAI and the data stack; a predictor that only reads checkpoints should not pay for it.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medseg.training' has no attribute {name!r}")


__all__ = [
    "CHECKPOINT_FORMAT",
    "PlanResult",
    "TrainResult",
    "check_and_plan",
    "load_checkpoint",
    "save_checkpoint",
    "train",
]
