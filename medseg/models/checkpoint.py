"""The checkpoint schema: one ``torch.save`` dict of plain types, written atomically, read with ``weights_only=True``.

Everything a checkpoint holds is a tensor, dict, list, str, int, float, bool or None, so
``torch.load(weights_only=True)`` (no arbitrary code on load) reads it, including the RNG states that make a
resumed run continue exactly where it stopped. Fields (``CHECKPOINT_FORMAT`` = ``medseg-checkpoint/2``; ``/1``,
written before the model registry, still loads: its ``model`` field is the seed-era ``{"n_channels", "n_outputs",
"bilinear", "base_features"}``, read as the plain UNet at depth 4). Other fields may be present (e.g. ``plan``,
``qc_reference``): they are kept as they are and never an error.

- ``format``: ``"medseg-checkpoint/2"``
- ``model_state``: the network's ``state_dict`` (float32, contiguous)
- ``optimizer_state``: AdamW ``state_dict``
- ``scheduler_state``: :class:`medseg.training.schedule.LRSchedule` ``state_dict`` (kind, plan, progress)
- ``scaler_state``: GradScaler ``state_dict`` (fp16 on CUDA) or ``None``
- ``epoch``: number of finished epochs
- ``elapsed_seconds``: training wall-clock so far (the ``max_minutes`` budget and schedule continue from it)
- ``rng``: :func:`medseg.training.resume.capture_rng_state`: ``{"torch": ByteTensor, "cuda": [ByteTensor],
  "numpy": {...lists}, "python": [...]}``
- ``config``: the resolved config (``Config.model_dump(mode="json")``)
- ``model``: :meth:`medseg.models.registry.NetworkSpec.to_dict`: ``{"architecture", "in_channels",
  "out_channels", "options": {"bilinear", "base_features", "depth"}}``
- ``mode``: ``"sigmoid"`` | ``"softmax"`` | ``"regions"``
- ``classes``: class names, background first (with regions: background, then the regions in painting order)
- ``label_values``: the value each class is stored as (and written as) in mask files, or ``None`` (class k as k)
- ``ignore_label``: the value of unannotated voxels in the training labels, or ``None``
- ``regions``: ``medseg.data.regions.Regions.to_stored()`` (``{"names", "members", "paint"}``) for a region
  model, else ``None`` (absent in checkpoints written before regions: ``None``)
- ``class_weights``: the loss weights used, one per class incl. background (list of float) or ``None``
- ``normalization``: ``NormalizationParams.to_dict()``
- ``slice_axis``: resolved slicing axis (0, 1, 2)
- ``context_slices``: k (the model sees 2k+1 channels)
- ``patch_hw``: ``[H, W]`` training patch (inputs are padded to at least this)
- ``pad_multiple``: H, W are padded to a multiple of this (at least ``2 ** depth``)
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
"""

from __future__ import annotations

import pickle
import platform
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import CheckpointError
from medseg.io.atomic import atomic_path
from medseg.io.storage import output_storage
from medseg.models.base import SegmentationNet
from medseg.models.registry import NetworkSpec, build_model
from medseg.models.state_fit import state_dict_mismatch

CHECKPOINT_FORMAT = "medseg-checkpoint/2"
#: Formats :func:`load_checkpoint` reads (``/1``: before the model registry; its ``model`` field is mapped).
READABLE_FORMATS: tuple[str, ...] = ("medseg-checkpoint/1", CHECKPOINT_FORMAT)

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

    Raises:
        OutputStorageError: The disk is full or read-only (torch reports a full disk only as
            ``[enforce fail at inline_container.cc]``); the message says the checkpoints already there are intact.
    """
    path = Path(path)
    with output_storage(path.parent, _intact_note(path)), atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)
    return path


def _intact_note(path: Path) -> str:
    kept = sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
    what = f"the checkpoints already there ({', '.join(kept)}) are intact" if kept else "no checkpoint was written"
    return (
        f"Saving '{path.name}' failed; {what}: a save goes to a temp file that is renamed only when complete. "
        "Free space (or pick another output.dir) and continue with training.resume: true"
    )


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Reads a medseg checkpoint safely (``torch.load(weights_only=True)``: no code runs on load).

    Args:
        path: A ``.pt`` file written by :func:`save_checkpoint`.
        map_location: Where tensors are loaded (default CPU).

    Returns:
        The checkpoint dict, as stored (a ``/1`` checkpoint keeps its ``format`` and ``model`` fields; read the
        network through :func:`network_spec`).

    Raises:
        CheckpointError: The file is missing, not a torch checkpoint, holds objects ``weights_only`` refuses,
            is not a medseg checkpoint, or lacks required fields.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint '{path}' does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"Checkpoint '{path}' is empty (0 bytes): a copy or download that did not finish, or a file that is "
            "not the checkpoint; use the best.pt/last.pt a training run wrote"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        reason = str(err).strip() or type(err).__name__  # EOFError on a truncated file has no message
        raise CheckpointError(
            f"Checkpoint '{path}' cannot be read (corrupt, truncated or not a medseg checkpoint): {reason}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"Checkpoint '{path}' holds a {type(ckpt).__name__}, not a medseg checkpoint dict")
    if ckpt.get("format") not in READABLE_FORMATS:
        raise CheckpointError(
            f"Checkpoint '{path}' has format {ckpt.get('format')!r}; this medseg reads "
            + ", ".join(f"'{f}'" for f in READABLE_FORMATS)
        )
    missing = [k for k in REQUIRED_FIELDS if k not in ckpt]
    if missing:
        raise CheckpointError(f"Checkpoint '{path}' lacks the fields: {', '.join(missing)}")
    return ckpt


def network_spec(ckpt: dict[str, Any], path: str | Path = "<memory>") -> NetworkSpec:
    """The network a checkpoint describes (either format).

    Raises:
        CheckpointError: No ``model`` field, or one that is not a network description.
    """
    if "model" not in ckpt:
        raise CheckpointError(f"Checkpoint '{path}' has no 'model' field; is it a medseg checkpoint?")
    try:
        return NetworkSpec.from_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"Checkpoint '{path}': bad 'model' description {ckpt['model']!r}: {err}") from None


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    # State dicts saved from DistributedDataParallel ("module.") or torch.compile ("_orig_mod.") wrappers.
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def model_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "<memory>") -> tuple[SegmentationNet, NetworkSpec]:
    """Builds the checkpoint's network (through the registry) and loads its weights.

    Args:
        ckpt: A dict from :func:`load_checkpoint`.
        path: The file it came from (for error messages).

    Returns:
        ``(model, spec)``; the model is on the CPU in train mode, as ``build_model`` makes it.

    Raises:
        CheckpointError: A bad network description, or weights that do not fit it.
    """
    spec = network_spec(ckpt, path)
    try:
        model = build_model(spec)
    except Exception as err:  # ConfigError from the registry: in a checkpoint it is the file's fault
        raise CheckpointError(f"Checkpoint '{path}': bad 'model' description {ckpt['model']!r}: {err}") from None
    if "model_state" not in ckpt:
        raise CheckpointError(f"Checkpoint '{path}' has no 'model_state' field; is it a medseg checkpoint?")
    state = _strip_prefixes(ckpt["model_state"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        # torch lists every mismatched tensor (~100 lines for a wrong width): counts and a few examples.
        raise CheckpointError(
            f"Checkpoint '{path}': weights do not fit the recorded model {ckpt['model']}: "
            f"{state_dict_mismatch(model, state) or err}"
        ) from None
    return model, spec


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
