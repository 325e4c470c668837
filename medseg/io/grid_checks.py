"""Checks on a scan's voxel grid at load time: a degenerate affine is refused, a sheared one is reported.

A NIfTI sform (or an NRRD ``space directions``) can describe any 3x3 matrix. A zero or collinear column (a
degenerate affine) has no inverse, so nothing can be resampled onto it: refuse it at load, naming the file,
rather than fail later inside prediction. A *sheared* grid (axes not at right angles) is a real grid, so it is
read; but the voxel volume is then ``|det(A)|``, smaller than the product of the voxel sizes, and distances
computed per axis treat the grid as orthogonal. medseg computes volumes from ``|det|`` everywhere
(:attr:`medseg.volume.Volume.voxel_volume`) and warns here, naming the file and the shear.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from medseg.errors import DegenerateGeometryError

__all__ = ["check_grid", "shear_degrees"]

log = logging.getLogger(__name__)

#: Smallest voxel size (mm) still taken as a real axis.
_MIN_SPACING_MM = 1e-6
#: Smallest |det| / product of voxel sizes (the sine of how far the axes are from spanning 3D) still invertible.
_MIN_VOLUME_RATIO = 1e-6
#: Axes further than this from right angles (degrees) are reported as sheared. NIfTI stores the sform in
#: float32 (cosines exact to ~1e-7, i.e. ~6e-6 degrees), so this flags only shear that is really there.
SHEAR_WARN_DEGREES = 0.01


def shear_degrees(affine: np.ndarray) -> tuple[float, str]:
    """How far the grid's axes are from right angles: the largest deviation (degrees) and the axis pair."""
    a = np.asarray(affine, dtype=np.float64)[:3, :3]
    d = a / np.linalg.norm(a, axis=0)
    worst, pair = 0.0, "i, j"
    for (p, q), name in zip(((0, 1), (0, 2), (1, 2)), ("i, j", "i, k", "j, k"), strict=True):
        angle = math.degrees(math.acos(float(np.clip(d[:, p] @ d[:, q], -1.0, 1.0))))
        if abs(angle - 90.0) > worst:
            worst, pair = abs(angle - 90.0), name
    return worst, pair


def check_grid(affine: np.ndarray, path: Path) -> None:
    """Refuses a degenerate affine; logs a warning for a sheared one.

    Args:
        affine: 4x4 voxel -> world affine of the scan.
        path: The scan, for the messages.

    Raises:
        DegenerateGeometryError: Non-finite entries, a zero-length axis, or axes that do not span 3D.
    """
    a = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise DegenerateGeometryError(path, f"its affine has non-finite entries:\n{np.array2string(a, precision=4)}")
    norms = np.linalg.norm(a[:3, :3], axis=0)
    zero = [axis for axis, n in zip("ijk", norms, strict=True) if n < _MIN_SPACING_MM]
    if zero:
        raise DegenerateGeometryError(
            path,
            f"its affine gives voxel axis {', '.join(zero)} zero length (voxel sizes {np.round(norms, 6).tolist()} "
            "mm), so voxels cannot be placed in space; fix the header (NIfTI pixdim / sform / qform, NRRD space "
            "directions)",
        )
    det = abs(float(np.linalg.det(a[:3, :3])))
    if det < _MIN_VOLUME_RATIO * float(np.prod(norms)):
        raise DegenerateGeometryError(
            path,
            f"its affine is singular (|det| = {det:.3g}: the voxel axes do not span 3D space), so voxels cannot be "
            "placed in space; fix the header (NIfTI sform / qform, NRRD space directions)",
        )
    degrees, pair = shear_degrees(a)
    if degrees > SHEAR_WARN_DEGREES:
        product = float(np.prod(norms))
        log.warning(
            "%s: the voxel grid is sheared (axes %s are %.3f degrees from a right angle). Volumes use |det(affine)| "
            "= %.4f mm^3 per voxel (the product of voxel sizes, %.4f mm^3, would be %.2f %% too high); surface "
            "distances (HD95, ASSD) treat the grid as orthogonal. Resample the scan to an orthogonal grid if exact "
            "distances matter.",
            path,
            pair,
            degrees,
            det,
            product,
            100.0 * (product / det - 1.0),
        )
