"""World-coordinate conversions, in one place.

medseg's :class:`~medseg.volume.Volume` holds ``array[i, j, k]`` (NIfTI voxel order) and a 4x4 affine from voxel
index to **RAS+** millimetres. ITK (SimpleITK, hence DICOM, NRRD and MHA) describes the same grid with spacing,
origin and a direction matrix in **LPS+** millimetres, and its arrays come out of ``GetArrayFromImage`` as
``(k, j, i)``. Every conversion between the two conventions goes through the functions below, so a flip or a
transposition can only be wrong here (and the tests check it here).
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medseg.volume import RAS_TO_LPS

__all__ = [
    "affine_from_itk",
    "array_to_sitk",
    "itk_from_affine",
    "set_sitk_geometry",
    "sitk_affine",
    "sitk_to_array",
]


def affine_from_itk(spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Builds the voxel -> RAS affine of an ITK (LPS) grid.

    Args:
        spacing: Voxel size along i, j, k in mm, shape ``(3,)``.
        origin: LPS position of voxel (0, 0, 0) in mm, shape ``(3,)``.
        direction: 3x3 matrix whose columns are the unit LPS directions of i, j, k.

    Returns:
        4x4 float64 affine mapping ``(i, j, k, 1)`` to RAS mm.
    """
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(spacing, dtype=np.float64)
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return RAS_TO_LPS @ lps


def itk_from_affine(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits a voxel -> RAS affine into ITK's LPS spacing, origin and direction.

    Args:
        affine: 4x4 voxel -> RAS affine.

    Returns:
        ``(spacing (3,), origin (3,), direction (3, 3))`` with direction columns the LPS unit axes of i, j, k.
    """
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return spacing, lps[:3, 3].copy(), lps[:3, :3] / spacing


def sitk_affine(image: sitk.Image) -> np.ndarray:
    """The voxel -> RAS affine of a 3D SimpleITK image."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    return affine_from_itk(
        np.array(image.GetSpacing()), np.array(image.GetOrigin()), np.array(image.GetDirection()).reshape(3, 3)
    )


def set_sitk_geometry(image: sitk.Image, affine: np.ndarray) -> None:
    """Gives a 3D SimpleITK image the grid described by a voxel -> RAS affine (in place)."""
    spacing, origin, direction = itk_from_affine(affine)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction.ravel()])


def sitk_to_array(image: sitk.Image) -> np.ndarray:
    """Voxels of a 3D SimpleITK image as an ``(I, J, K)`` array.

    ``GetArrayFromImage`` returns ``(k, j, i)``; the transposed view has NIfTI's voxel order and the same
    (Fortran) memory layout nibabel returns, so no copy is made.
    """
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def array_to_sitk(array: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A SimpleITK image holding an ``(I, J, K)`` array on the grid of ``affine`` (voxel -> RAS)."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array).transpose(2, 1, 0)))
    set_sitk_geometry(image, affine)
    return image
