"""Labels stored with other values than their class index (``data.label_values``).

A dataset declares how each class is stored: BraTS files hold 0, 1, 2 and 4 (no 3), many tools save a binary
mask as 0/255. medseg works with class indices ``0..n-1`` inside and reads and writes the stored values at its
edges: label files are mapped to indices when read (training and evaluation) and predicted masks are written
with the stored values, so a run's outputs follow the dataset's own convention. Any value outside the declared
ones is refused with the file named, never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Largest value a label file may store: masks are written as uint8, or uint16 above 255.
MAX_LABEL_VALUE = 65535


def label_values_problem(values: Sequence[int], n_classes: int | None = None) -> str | None:
    """Why ``values`` cannot be the stored values of the classes, or ``None``.

    Args:
        values: Stored value of each class, in class order (background first).
        n_classes: Number of classes including background, when known (the lengths must match).
    """
    values = list(values)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in values):
        return f"label values must be integers, got {values}"
    if len(values) < 2:
        return f"label values need background and at least one class, got {values}"
    if len(set(values)) != len(values):
        return f"label values must differ from each other, got {values}"
    if min(values) < 0 or max(values) > MAX_LABEL_VALUE:
        return f"label values must be in 0..{MAX_LABEL_VALUE} (masks are written as uint8/uint16), got {values}"
    if n_classes is not None and len(values) != n_classes:
        return f"{len(values)} label values {values} for {n_classes} classes: give one per class, background first"
    return None


def is_identity(values: Sequence[int] | None) -> bool:
    """True when ``values`` stores class k as k (or is ``None``): nothing to map."""
    return values is None or list(values) == list(range(len(values)))


def unexpected_values(array: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """The distinct values of ``array`` that are not in ``values`` (sorted; empty when all are declared).

    ``array`` holds integral values (integer types, or floats checked to be integral).
    """
    arr = np.asarray(array)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)  # Python numbers: no uint8 wrap
    if lo >= 0 and hi <= MAX_LABEL_VALUE:  # a count per value: linear time, where np.unique sorts the volume
        found = np.flatnonzero(np.bincount(arr.ravel().astype(np.int64, copy=False)))
    else:
        found = np.unique(arr)
    return found[~np.isin(found, np.asarray(values))]


def to_classes(
    array: np.ndarray, values: Sequence[int], dtype: type[np.integer] = np.uint8, *, unlisted: int | None = None
) -> np.ndarray:
    """Maps stored values to class indices: voxels holding ``values[k]`` become ``k``.

    Args:
        array: A label volume with integral values (float arrays too, checked to be integral first).
        values: Stored value of each class, in class order.
        dtype: Type of the returned indices (enough for ``len(values)`` classes).
        unlisted: The class of any value not in ``values`` (``0``: background); ``None`` = refuse them.

    Raises:
        ValueError: ``array`` holds a value not in ``values`` (and ``unlisted`` is ``None``).
    """
    arr = np.asarray(array)
    if arr.size == 0:
        return arr.astype(dtype)
    if unlisted is not None:
        # Out-of-range values (negative, huge) are unlisted too; clip them onto one so the table stays small.
        top = max(values) + 1
        arr = np.where((arr < 0) | (arr > top), top, arr)
    lo, hi = float(arr.min()), float(arr.max())  # Python numbers: comparing a uint8 with 65535 would wrap
    if lo < 0 or hi > MAX_LABEL_VALUE:
        raise ValueError(f"label holds values {unexpected_values(arr, values)[:10].tolist()} not among {list(values)}")
    # A lookup table over 0..max: one indexing pass, where a search per voxel is several times slower.
    lut = np.full(int(hi) + 1, -1 if unlisted is None else unlisted, dtype=np.int32)
    for k, v in enumerate(values):
        if v <= hi:
            lut[v] = k
    indices = lut[arr if arr.dtype.kind in "iub" else arr.astype(np.int64)]
    if unlisted is None and indices.min() < 0:
        raise ValueError(f"label holds values {unexpected_values(arr, values)[:10].tolist()} not among {list(values)}")
    return indices.astype(dtype)


def to_stored(mask: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """Maps class indices to their stored values (uint8, or uint16 when a value exceeds 255), for writing."""
    dtype = np.uint8 if max(values) <= 255 else np.uint16
    return np.asarray(values, dtype=dtype)[np.asarray(mask)]
