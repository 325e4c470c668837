"""Checks shared by the readers: reduce to one 3D channel, refuse non-finite voxels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.errors import UnreadableScanError


def to_3d(array: np.ndarray, path: Path, channel: int | None) -> np.ndarray:
    """Reduces a reader's ``(I, J[, K[, ...]])`` array to the ``(I, J, K)`` volume that was asked for.

    A 2D image becomes one slice (K = 1); singleton dimensions after the third are dropped (a "4D" file with
    one time point is just a 3D scan); a real 4th dimension (channels, time points) needs ``channel``.

    Raises:
        UnreadableScanError: More than one channel and none chosen, a channel out of range, or more than 4D.
    """
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if array.ndim > 3:
        extra = [s for s in array.shape[3:] if s != 1]
        array = array.reshape(array.shape[:3] + tuple(extra))
    if array.ndim == 3:
        if channel not in (None, 0):
            raise UnreadableScanError(path, f"channel={channel} requested but the volume has a single channel")
        return array
    if array.ndim == 4:
        n = array.shape[3]
        if channel is None:
            raise UnreadableScanError(
                path,
                f"it is a 4D volume with {n} channels/time points (shape {array.shape}); "
                f"choose one with channel=0..{n - 1}",
            )
        if not 0 <= channel < n:
            raise UnreadableScanError(path, f"channel={channel} is out of range: the volume has {n} channels")
        return array[:, :, :, channel]
    raise UnreadableScanError(path, f"it has {array.ndim} dimensions (shape {array.shape}); medseg reads 3D or 4D")


def check_finite(array: np.ndarray, path: Path) -> None:
    """Raises UnreadableScanError if a floating-point array holds NaN or infinite voxels."""
    if np.issubdtype(array.dtype, np.floating):
        bad = int(array.size - np.count_nonzero(np.isfinite(array)))
        if bad:
            raise UnreadableScanError(path, f"{bad} voxel(s) are NaN or infinite; the scan is corrupt or mis-exported")
