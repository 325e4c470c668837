"""`Volume`: a voxel array plus its geometry, nothing else.

Axis order (stated once, trusted everywhere): ``array[i, j, k]`` is indexed like NIfTI voxel coordinates, and
``affine`` maps ``(i, j, k, 1)`` to **RAS+ world millimetres** (nibabel's convention). Readers of LPS formats
(DICOM, NRRD, MHA through SimpleITK) convert at the ``medseg.io`` boundary; no other module converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import GeometryMismatchError

#: Flips the first two world axes: RAS <-> LPS (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D scan or mask and where it lies in the world.

    Attributes:
        array: Voxel values, shape ``(I, J, K)``, indexed like NIfTI voxel coordinates.
        affine: 4x4 float64 matrix from voxel index ``(i, j, k, 1)`` to RAS+ world coordinates in mm.
        source: File or DICOM folder the volume was read from, if any.
        header: Format-specific header needed to write a faithful copy of the geometry (for NIfTI sources, a
            ``nibabel.Nifti1Header`` keeping qform/sform and their codes); ``None`` otherwise.
    """

    array: np.ndarray
    affine: np.ndarray
    source: Path | None = None
    header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if np.asarray(self.array).ndim != 3:
            raise ValueError(f"Volume array must be 3D (I, J, K), got shape {np.shape(self.array)}")
        object.__setattr__(self, "affine", affine)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape ``(I, J, K)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k (column norms of the affine's 3x3 part)."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm³: ``|det|`` of the affine's 3x3 part.

        Equal to the product of :attr:`spacing` on an orthogonal grid; smaller on a sheared one, where that
        product over-counts (the parallelepiped's edges are longer than its height). Use this for volumes.
        """
        return abs(float(np.linalg.det(self.affine[:3, :3])))

    @property
    def origin(self) -> np.ndarray:
        """RAS world position (mm) of the centre of voxel (0, 0, 0)."""
        return self.affine[:3, 3].copy()

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the i, j, k axes."""
        return self.affine[:3, :3] / self.spacing

    def with_array(self, array: np.ndarray) -> Volume:
        """Returns a volume on the same grid (same affine, source and header) holding ``array``.

        Raises:
            GeometryMismatchError: If ``array``'s shape differs from this volume's.
        """
        if tuple(array.shape) != self.shape:
            raise GeometryMismatchError(
                f"Array of shape {tuple(array.shape)} does not fit the grid of "
                f"'{self.source or 'volume'}' with shape {self.shape}"
            )
        return Volume(array=array, affine=self.affine, source=self.source, header=self.header)

    @property
    def orientation(self) -> str:
        """Axis code of the voxel axes, e.g. ``"RAS"`` or ``"LPS"`` (``?`` for an axis nibabel cannot name)."""
        import nibabel.orientations as nio

        try:
            codes = nio.aff2axcodes(self.affine)
        except (ValueError, np.linalg.LinAlgError):  # a degenerate affine has no orientation
            return "???"
        return "".join(c if c is not None else "?" for c in codes)

    def __repr__(self) -> str:
        # Concise (shape, spacing, orientation, dtype, source) like TorchIO's images: the default dataclass repr
        # printed the whole voxel array and the 4x4 affine.
        spacing = ", ".join(f"{s:.4g}" for s in self.spacing)
        source = f"'{self.source}'" if self.source is not None else "None"
        return (
            f"Volume(shape={self.shape}, spacing=({spacing}) mm, orientation='{self.orientation}', "
            f"dtype={np.asarray(self.array).dtype}, source={source})"
        )

    def same_grid(self, other: Volume, *, atol: float = 1e-4) -> bool:
        """Whether ``other`` has the same shape and affine (to ``atol`` mm) as this volume."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))
