"""Class weights for the loss, from the training labels' voxel frequencies."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

import numpy as np

from medseg.errors import ConfigError
from medseg.metrics import class_voxel_counts

log = logging.getLogger(__name__)


def summed_class_voxel_counts(labels: Iterable[np.ndarray], n_classes: int, *, unannotated: bool = False) -> np.ndarray:
    """Voxels per class summed over ``labels`` (int64, ``(n_classes,)``; each by :func:`class_voxel_counts`).

    Args:
        labels: Class indices ``0..n_classes-1``.
        n_classes: Number of classes including background.
        unannotated: Labels may hold ``n_classes`` for unannotated voxels (``medseg.data.unannotated``), which are
            not counted.

    Raises:
        ValueError: If a label holds values outside ``0..n_classes-1`` (``0..n_classes`` with ``unannotated``).
    """
    top = n_classes if unannotated else n_classes - 1
    counts = np.zeros(n_classes, dtype=np.int64)
    for label in labels:
        flat = np.asarray(label).reshape(-1)
        if flat.size == 0:
            continue
        lo, hi = int(flat.min()), int(flat.max())
        if lo < 0 or hi > top:
            raise ValueError(f"label values {lo}..{hi} are outside 0..{top}")
        counts += class_voxel_counts(flat, n_classes)
    return counts


def per_region(counts: np.ndarray, membership: np.ndarray | None) -> np.ndarray:
    """Voxel counts per painted class turned into counts per region (``medseg.data.regions``: row ``r`` of
    ``membership`` marks the classes inside region ``r``); ``counts`` itself without regions."""
    if membership is None:
        return counts
    return np.asarray(membership, dtype=np.int64) @ np.asarray(counts, dtype=np.int64)


def compute_class_weights(
    labels: Iterable[np.ndarray],
    n_classes: int,
    clip: Sequence[float] = (0.2, 5.0),
    *,
    unannotated: bool = False,
    membership: np.ndarray | None = None,
) -> np.ndarray:
    """Inverse voxel frequency, normalised to mean 1 over classes, then clipped.

    A class absent from every label gets the upper clip value (it is maximally rare).

    Args:
        labels: Training label arrays (volumes or slices), values ``0..n_classes-1``.
        n_classes: Number of classes including background.
        clip: ``(low, high)`` range of the final weights (``loss.class_weight_range``).
        unannotated: Labels may mark unannotated voxels (:func:`summed_class_voxel_counts`); they are not counted.
        membership: With overlapping regions (``data.regions``), which painted classes each region holds
            (``Regions.membership``): each region's weight then follows its own voxels.

    Returns:
        float32 ``(n_classes,)`` weights, background first.
    """
    low, high = float(clip[0]), float(clip[1])
    if not 0 < low <= high:
        raise ValueError(f"class weight range must satisfy 0 < low <= high, got {tuple(clip)}")
    counts = summed_class_voxel_counts(labels, n_classes, unannotated=unannotated)
    counts = per_region(counts, membership).astype(np.float64)
    present = counts > 0
    weights = np.full(n_classes, high, dtype=np.float64)
    if present.any():
        inverse = counts[present].sum() / counts[present]
        # Normalise over the present classes so that one absent class does not drag all others down.
        weights[present] = inverse / inverse.mean()
    return np.clip(weights, low, high).astype(np.float32)


def resolve_class_weights(
    option: str | Sequence[float],
    labels: Iterable[np.ndarray],
    n_classes: int,
    clip: Sequence[float] = (0.2, 5.0),
    *,
    unannotated: bool = False,
    membership: np.ndarray | None = None,
) -> np.ndarray | None:
    """Turns ``loss.class_weights`` into weights: ``auto`` (computed, unannotated voxels not counted, regions by
    their own voxels: ``membership``, see :func:`compute_class_weights`), ``none`` (``None``) or an explicit list.

    Raises:
        ConfigError: If an explicit list does not have one positive weight per class (incl. background).
    """
    if isinstance(option, str):
        if option == "none":
            return None
        if option != "auto":
            raise ConfigError(f"loss.class_weights: expected auto, none or a list, got {option!r}")
        weights = compute_class_weights(labels, n_classes, clip, unannotated=unannotated, membership=membership)
        log.debug("Class weights (auto): %s", [round(float(w), 3) for w in weights])
        return weights
    weights = np.asarray(list(option), dtype=np.float32)
    if weights.shape != (n_classes,) or not np.all(weights > 0):
        raise ConfigError(
            f"loss.class_weights: need {n_classes} positive weights (background first), got {list(option)}"
        )
    return weights
