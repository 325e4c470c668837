"""Checks shared by the readers: reduce to one 3D channel, refuse non-finite voxels."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medseg.errors import MultiChannelScanError, UnreadableScanError
from medseg.io.read_options import CHANNEL_HINT, NAN_HINT

log = logging.getLogger(__name__)


def channel_count(shape: tuple[int, ...]) -> int:
    """How many channels a reader's array of this shape holds, as :func:`to_3d` reads it: the size of the one
    non-singleton dimension after the third (SimpleITK writes a vector NIfTI's channels on the 5th axis, after a
    singleton 4th); 1 when there is none; with several, their product (such a file is refused when read)."""
    extra = [int(s) for s in shape[3:] if s != 1]
    return int(np.prod(extra)) if extra else 1


def to_3d(array: np.ndarray, path: Path, channel: int | None, *, default_channel: int | None = None) -> np.ndarray:
    """Reduces a reader's ``(I, J[, K[, ...]])`` array to the ``(I, J, K)`` volume that was asked for.

    A 2D image becomes one slice (K = 1); singleton dimensions after the third are dropped (a "4D" file with
    one time point is just a 3D scan); a real 4th dimension (channels, time points) needs ``channel``.

    Args:
        array: The reader's array.
        path: The scan, for messages.
        channel: The channel asked for explicitly (a 3D scan then refuses any channel but 0).
        default_channel: The configured channel (``data.channel``), used only for scans that have channels.

    Raises:
        MultiChannelScanError: More than one channel and none chosen.
        UnreadableScanError: A channel out of range, or more than 4D.
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
            channel = default_channel
        if channel is None:
            raise MultiChannelScanError(
                path,
                f"it is a 4D volume with {n} channels/time points (shape {array.shape}); "
                f"choose one (0..{n - 1}) with {CHANNEL_HINT}",
                n_channels=n,
                shape=array.shape,
            )
        if not 0 <= channel < n:
            raise UnreadableScanError(path, f"channel={channel} is out of range: the volume has {n} channels")
        return array[:, :, :, channel]
    raise UnreadableScanError(path, f"it has {array.ndim} dimensions (shape {array.shape}); medseg reads 3D or 4D")


def check_finite(array: np.ndarray, path: Path, *, nan_as_zero: bool = False) -> np.ndarray:
    """Refuses floating-point voxels that are NaN or infinite, saying how many, where, and how to fix it.

    Args:
        array: ``(I, J, K)`` voxels.
        path: The scan, for messages.
        nan_as_zero: Replace NaN voxels with 0 (logged with their count) instead of refusing; infinite voxels
            are refused either way (no value stands in for them).

    Returns:
        ``array`` itself, or a copy with NaN replaced by 0.

    Raises:
        UnreadableScanError: NaN (unless ``nan_as_zero``) or infinite voxels.
    """
    if not np.issubdtype(array.dtype, np.floating):
        return array
    finite = np.isfinite(array)
    if finite.all():
        return array
    nan = np.isnan(array)
    n_nan, n_inf = int(nan.sum()), int((~finite & ~nan).sum())
    where = _where(~finite if n_inf or not nan_as_zero else nan, array.shape)
    if n_inf == 0 and nan_as_zero:
        log.warning("%s: %d NaN voxel(s) (%s) read as 0 (nan_as_zero)", path, n_nan, where)
        return np.where(nan, np.zeros((), dtype=array.dtype), array)
    found = " and ".join(
        part for part in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} infinite" if n_inf else "") if part
    )
    fix = (
        "re-export or re-resample the scan (resampling tools write NaN outside the source field of view), or "
        f"replace them in the file (e.g. numpy.nan_to_num); to read NaN voxels as 0, set {NAN_HINT}"
        if n_nan and not n_inf
        else "re-export the scan, or replace them in the file (e.g. numpy.nan_to_num); infinite voxels are "
        "always refused"
    )
    raise UnreadableScanError(
        path, f"{found} voxel(s) of {array.size} ({where}); the scan is corrupt or mis-exported: {fix}"
    )


def _where(bad: np.ndarray, shape: tuple[int, ...]) -> str:
    """Where the flagged voxels are: their bounding box and how many slices (along k) hold any."""
    idx = np.argwhere(bad)
    lo, hi = idx.min(axis=0), idx.max(axis=0)
    box = ", ".join(f"{a} {int(a0)}..{int(a1)}" for a, a0, a1 in zip("ijk", lo, hi, strict=False))
    n_slices = int(np.unique(idx[:, 2]).size) if bad.ndim == 3 else 0
    share = 100.0 * float(bad.sum()) / bad.size
    return f"{share:.2f} % of the voxels, within {box}; in {n_slices} of {shape[2]} slices along k"
