"""Resuming a run: RNG states in and out of a checkpoint, and the config check.

A resumed run continues exactly where it stopped: weights, optimiser, schedule, scaler, RNG states, epoch,
elapsed time, early-stopping counter and history come back from ``last.pt``. It may only resume when the config
still describes the same model, data and split (:data:`RESUME_MUST_MATCH`); anything else is a new run.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.config import Config
from medseg.errors import CheckpointError
from medseg.models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

#: Config keys a resumed run must share with its checkpoint (they define the model, the data or the split).
#: The loss mode is compared as decided (``loss.mode: auto`` resolved), by the trainer once it knows the classes.
RESUME_MUST_MATCH: tuple[str, ...] = (
    "model.architecture",
    "model.depth",
    "model.base_features",
    "model.bilinear",
    "loss.class_weights",
    "loss.class_weight_range",
    "preprocessing",
    "data.classes",
    "data.label_values",
    "data.unlisted_labels",
    "data.class_aliases",
    "data.seed",
    "data.val_fraction",
    "data.folds",
    "data.fold",
    "data.max_cases",
    "training.seed",
    "training.scheduler",
)

#: What a key absent from an older checkpoint's config meant then (configs before ``model.architecture`` or
#: ``data.class_aliases``). The value of unannotated voxels is compared as discovered (``data.ignore_label`` or
#: dataset.json), by the trainer.
_ABSENT_MEANT: dict[str, Any] = {
    "model.architecture": "unet",
    "model.depth": 4,
    "data.class_aliases": {},
}


def capture_rng_state() -> dict[str, Any]:
    """All RNG states as ``weights_only``-safe values (tensors and lists, no numpy arrays or tuples)."""
    np_state = np.random.get_state(legacy=True)
    assert isinstance(np_state, tuple)  # legacy=True always gives the tuple form
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_state[0]),
            "keys": [int(k) for k in np_state[1]],
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [int(py_version), [int(v) for v in py_internal], py_gauss],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restores the states captured by :func:`capture_rng_state` (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def load_resume_checkpoint(cfg: Config, last_path: Path, *, main: bool = True) -> dict[str, Any] | None:
    """The checkpoint to resume from, or ``None`` for a new run.

    Args:
        cfg: The run's config (``training.resume`` decides whether to look).
        last_path: ``checkpoints/last.pt`` of the run.
        main: Whether this is rank 0 (only it warns about a checkpoint that a new run will replace).

    Raises:
        CheckpointError: The checkpoint's config differs in a key of :data:`RESUME_MUST_MATCH`.
    """
    if not cfg.training.resume:
        if main and last_path.exists():
            log.warning("training.resume is false: starting a new run; %s will be replaced", last_path)
        return None
    if not last_path.exists():
        log.warning("training.resume: no checkpoint at %s; starting a new run", last_path)
        return None
    ckpt = load_checkpoint(last_path)
    current = cfg.model_dump(mode="json")

    def stored(key: str) -> Any:
        value = _get(ckpt["config"], key)
        return _ABSENT_MEANT.get(key) if value is None else value

    diffs = [
        f"{key}: checkpoint {stored(key)!r}, config {_get(current, key)!r}"
        for key in RESUME_MUST_MATCH
        if stored(key) != _get(current, key)
    ]
    if diffs:
        raise CheckpointError(
            f"Cannot resume from '{last_path}': the config differs in settings that define the model, "
            "data or split:\n  " + "\n  ".join(diffs) + "\nStart a new run (another output.dir) instead."
        )
    log.info("Resuming from %s (epoch %d)", last_path, ckpt["epoch"])
    return ckpt
