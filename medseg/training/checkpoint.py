"""Where the checkpoint helpers used to live; they moved to ``medseg.models.checkpoint`` (the schema and its
load/save, next to the networks) and ``medseg.training.resume`` (RNG states). Kept so older imports work."""

from __future__ import annotations

from medseg.models.checkpoint import (
    CHECKPOINT_FORMAT,
    READABLE_FORMATS,
    REQUIRED_FIELDS,
    library_versions,
    load_checkpoint,
    save_checkpoint,
)
from medseg.training.resume import capture_rng_state, restore_rng_state

__all__ = [
    "CHECKPOINT_FORMAT",
    "READABLE_FORMATS",
    "REQUIRED_FIELDS",
    "capture_rng_state",
    "library_versions",
    "load_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
]
