"""Checkpoints: one ``torch.save`` dict of plain types, written atomically, read with ``weights_only=True``.

Everything a checkpoint holds is a tensor, dict, list, str, int, float, bool or None, so
``torch.load(weights_only=True)`` (no arbitrary code on load) reads it, including the RNG states that make a
resumed run continue exactly where it stopped. Fields (``CHECKPOINT_FORMAT`` = ``medseg-checkpoint/1``):

- ``format``: ``"medseg-checkpoint/1"``
- ``model_state``: UNet ``state_dict`` (float32, contiguous)
- ``optimizer_state``: AdamW ``state_dict``
- ``scheduler_state``: :class:`medseg.training.schedule.LRSchedule` ``state_dict`` (kind, plan, progress)
- ``scaler_state``: GradScaler ``state_dict`` (fp16 on CUDA) or ``None``
- ``epoch``: number of finished epochs
- ``elapsed_seconds``: training wall-clock so far (the ``max_minutes`` budget and schedule continue from it)
- ``rng``: ``{"torch": ByteTensor, "cuda": [ByteTensor], "numpy": {...lists}, "python": [...]}``
- ``config``: the resolved config (``Config.model_dump(mode="json")``)
- ``model``: ``{"n_channels", "n_outputs", "bilinear", "base_features"}``
- ``mode``: ``"sigmoid"`` | ``"softmax"``
- ``classes``: class names, background first
- ``class_weights``: the loss weights used, one per class incl. background (list of float) or ``None``
- ``normalization``: ``NormalizationParams.to_dict()``
- ``slice_axis``: resolved slicing axis (0, 1, 2)
- ``context_slices``: k (the model sees 2k+1 channels)
- ``patch_hw``: ``[H, W]`` training patch (inputs are padded to at least this)
- ``pad_multiple``: H, W are padded to a multiple of this
- ``precision``: training autocast: ``"fp32"`` | ``"bf16"`` | ``"fp16"``
- ``channels_last``: whether training ran NHWC
- ``postprocessing``: ``{"largest_component": [class idx], "fill_holes": [class idx]}`` (decided on validation
  volumes with the best weights; empty lists in ``last.pt``)
- ``postprocessing_decided``: whether ``postprocessing`` was decided (True in a finished run's ``best.pt``)
- ``best_dice``: best mean validation Dice so far (``-1.0`` before the first validation)
- ``best_epoch``: epoch of ``best_dice`` (0 before the first validation)
- ``val_dice``: the latest mean validation Dice (or ``None``)
- ``stale_validations``: validations since the last improvement (early stopping resumes with it)
- ``stop_reason``: ``""`` while running, else ``epochs`` | ``max_minutes`` | ``early_stopping``
- ``split``: ``{"train": [case ids], "val": [case ids]}``
- ``history``: one dict per epoch (the rows of ``metrics.csv``)
- ``versions``: ``{"medseg", "torch", "numpy", "monai", "python"}``
- ``qc_reference`` (optional, ``best.pt`` of a finished run): what QC compares predictions with
  (``medseg.inference.qc.build_reference``); checkpoints without it predict with empty QC columns
"""

from __future__ import annotations

import pickle
import platform
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import CheckpointError
from medseg.io.atomic import atomic_path

CHECKPOINT_FORMAT = "medseg-checkpoint/1"

#: Fields every checkpoint written by the trainer holds (``load_checkpoint`` checks them).
REQUIRED_FIELDS: tuple[str, ...] = (
    "format",
    "model_state",
    "optimizer_state",
    "scheduler_state",
    "epoch",
    "rng",
    "config",
    "model",
    "mode",
    "classes",
    "class_weights",
    "normalization",
    "slice_axis",
    "context_slices",
    "patch_hw",
    "precision",
    "postprocessing",
    "best_dice",
    "versions",
)


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Writes ``checkpoint`` with ``torch.save`` to a temp file next to ``path``, then renames it onto ``path``.

    A run killed while saving leaves the previous checkpoint intact, never a truncated one.

    Args:
        path: Destination (``.pt``); parent folders are created.
        checkpoint: A dict of plain types and tensors (see the module docstring).

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a medseg checkpoint safely (``torch.load(weights_only=True)``: no code runs on load).

    Args:
        path: A ``.pt`` file written by :func:`save_checkpoint`.
        map_location: Where tensors are loaded (default CPU).

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: The file is missing, not a torch checkpoint, holds objects ``weights_only`` refuses,
            is not a medseg checkpoint, or lacks required fields.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read (corrupt or not a medseg checkpoint): {err}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(ckpt).__name__}, not a medseg checkpoint dict")
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"Checkpoint '{path}' has format {ckpt.get('format')!r}; this medseg reads '{CHECKPOINT_FORMAT}'"
        )
    missing = [k for k in REQUIRED_FIELDS if k not in ckpt]
    if missing:
        raise CheckpointError(f"Checkpoint '{path}' lacks the fields: {', '.join(missing)}")
    return ckpt


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


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a trained model (for the record in each checkpoint)."""
    import medseg

    versions = {
        "medseg": medseg.__version__,
        "torch": str(torch.__version__),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
    try:
        import monai

        versions["monai"] = str(monai.__version__)
    except ImportError:  # pragma: no cover - monai is a dependency, but a checkpoint must not need it
        versions["monai"] = "not installed"
    return versions
