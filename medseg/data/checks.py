"""Checks that an image and its label can be trained on together."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from medseg.data.cases import Case
from medseg.data.label_values import is_identity, unexpected_values
from medseg.errors import BadCaseError
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.data.label_reading import LabelReading

#: Largest allowed displacement of the grid corners between image and label, as a fraction of the smallest voxel
#: size. Loose enough for float32-stored NIfTI affines vs float64 DICOM geometry, tight enough to catch a
#: half-voxel shift or a flipped axis.
GEOMETRY_TOLERANCE = 0.01


def grid_corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (8, 3) of the centres of a voxel grid's corner voxels."""
    corners = np.array(list(itertools.product(*[(0, s - 1) for s in shape[:3]])), dtype=np.float64)
    return corners @ affine[:3, :3].T + affine[:3, 3]


def geometry_mismatch(image: Volume, label: Volume, tolerance: float = GEOMETRY_TOLERANCE) -> str | None:
    """Why ``label`` does not lie on ``image``'s voxel grid, or ``None`` if it does (shape and affine)."""
    if image.shape != label.shape:
        return f"shape {image.shape} != label shape {label.shape}"
    # Comparing where the corners land covers spacing, origin and direction in one number, in mm.
    shift = np.linalg.norm(grid_corners(image.shape, image.affine) - grid_corners(label.shape, label.affine), axis=1)
    allowed = tolerance * float(min(image.spacing.min(), label.spacing.min()))
    if shift.max() > allowed:
        return (
            f"geometry differs: grid corners are up to {shift.max():.4g} mm apart (allowed {allowed:.3g} mm); "
            f"image spacing {np.round(image.spacing, 4).tolist()} origin {np.round(image.origin, 3).tolist()}, "
            f"label spacing {np.round(label.spacing, 4).tolist()} origin {np.round(label.origin, 3).tolist()}"
        )
    return None


def label_problem(label: np.ndarray, n_classes: int, values: Sequence[int] | None = None) -> str | None:
    """Why ``label`` is not a valid label map for ``n_classes`` classes (incl. background), or ``None``.

    Args:
        label: The label volume as read.
        n_classes: Number of classes including background.
        values: The stored value of each class (``data.label_values``); ``None`` = class k is stored as k.
    """
    arr = np.asarray(label)
    problem = value_problem(arr)
    if problem:
        return problem
    if not is_identity(values):
        assert values is not None
        bad = unexpected_values(arr, values)
        if bad.size:
            return (
                f"label values {_shown(bad)} are not among data.label_values {list(values)} (data.unlisted_labels: "
                "background reads other values as background)"
            )
        return None
    lo, hi = arr.min(), arr.max()
    if lo < 0 or hi > n_classes - 1:
        found = np.unique(arr)
        bad = found[(found < 0) | (found > n_classes - 1)]
        problem = f"label values {_shown(bad)} are outside the {n_classes} classes (allowed 0..{n_classes - 1})"
        if n_classes == 2 and found.size == 2 and found[0] == 0 and len(bad) == 1:
            # The commonest case: a binary mask saved as 0/255 (many tools and challenges store masks so).
            problem += (
                f"; a binary mask stored as 0/{bad[0]:g}? Say so with data.label_values: [0, {bad[0]:g}] "
                "(medseg then reads it as stored and writes its masks the same way)"
            )
        elif len(bad) == 1 and bad[0] == found[-1] and found.size > 2:
            # One extra value above the classes: often the mark of voxels nobody annotated (255 in many sets).
            problem += (
                f"; if {bad[0]:g} marks voxels nobody annotated (sparse annotation), say so with "
                f"data.ignore_label: {bad[0]:g}; if it is a structure not to train, data.unlisted_labels: "
                "background reads it as background"
            )
        else:
            problem += "; data.unlisted_labels: background reads values that are no class's as background"
        return problem
    return None


def value_problem(label: np.ndarray) -> str | None:
    """Why ``label``'s values are not label values at all (not integral, not finite, not numbers), or ``None``."""
    arr = np.asarray(label)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            return "label holds non-finite values (NaN/inf)"
        if not np.array_equal(arr, np.round(arr)):
            return "label holds non-integer values (is it a probability map or an image?)"
    elif arr.dtype.kind not in "iub":
        return f"label has unsupported dtype {arr.dtype}"
    if arr.size == 0:
        return "label is empty"
    return None


def _shown(values: np.ndarray, limit: int = 10) -> str:
    return ", ".join(f"{v:g}" for v in values[:limit]) + (" ..." if len(values) > limit else "")


def check_pair(
    case: Case,
    image: Volume,
    label: Volume,
    n_classes: int,
    *,
    tolerance: float = GEOMETRY_TOLERANCE,
    labels: LabelReading | None = None,
) -> None:
    """Checks that ``label`` is a valid label map on ``image``'s grid.

    Args:
        case: The case (its files are named in the error).
        image: The loaded image.
        label: The loaded label.
        n_classes: Number of classes including background; label values must be in ``0..n_classes-1``.
        tolerance: Allowed corner displacement as a fraction of the smallest voxel size.
        labels: How the label file is read (stored values, unlisted values); ``None`` = class k as k, others
            refused.

    Raises:
        BadCaseError: Naming the image and label files and the reason (shape or geometry mismatch, label values
            outside the classes (or the stored values) or not integers, non-finite image intensities).
    """
    where = f"Case '{case.id}' (image '{case.image}', label '{case.label}')"
    mismatch = geometry_mismatch(image, label, tolerance)
    if mismatch:
        raise BadCaseError(f"{where}: image {mismatch}")
    problem = label_problem(label.array, n_classes) if labels is None else labels.problem(label.array, n_classes)
    if problem:
        raise BadCaseError(f"{where}: {problem}")
    check_image_finite(case, image)


def check_image_finite(case: Case, image: Volume) -> None:
    """Raises :class:`BadCaseError` if the image holds NaN or inf."""
    arr = image.array
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        files = f"image '{case.image}'" + (f", label '{case.label}'" if case.label else "")
        raise BadCaseError(f"Case '{case.id}' ({files}): image holds {n_bad} non-finite voxels (NaN/inf)")
