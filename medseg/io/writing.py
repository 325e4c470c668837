"""``save_mask`` / ``save_volume``: arrays written on a scan's grid, atomically, in NIfTI, NRRD or MHA."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from medseg.errors import GeometryMismatchError, MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.channels import ChannelStack
from medseg.io.itk import ITK_WRITE_SUFFIXES, write_itk
from medseg.io.nifti import NIFTI_SUFFIXES, write_nifti
from medseg.io.scans import image_suffix
from medseg.volume import Volume

DEFAULT_SUFFIX = ".nii.gz"
WRITE_SUFFIXES = NIFTI_SUFFIXES + ITK_WRITE_SUFFIXES


def _output_path(path: str | Path) -> tuple[Path, str]:
    path = Path(path)
    suffix = image_suffix(path)
    if suffix is None and not path.suffix:
        path, suffix = path.with_name(path.name + DEFAULT_SUFFIX), DEFAULT_SUFFIX
    if suffix not in WRITE_SUFFIXES:
        raise MedsegError(
            f"Cannot write '{path}': unsupported output type; use one of {', '.join(WRITE_SUFFIXES)} "
            "(.nhdr/.mhd keep their voxels in a second file, which an atomic write cannot move safely)"
        )
    return path, suffix


def _array_on_grid(array: np.ndarray | Volume, like: Volume, path: Path, what: str) -> np.ndarray:
    if isinstance(array, Volume):
        if array.shape == like.shape and not array.same_grid(like):
            raise GeometryMismatchError(
                f"Cannot write {what} '{path}': it lies on a different grid (affine) than '{like.source or 'like'}'"
            )
        array = array.array
    array = np.asarray(array)
    if array.shape != like.shape:
        raise GeometryMismatchError(
            f"Cannot write {what} '{path}': its shape {array.shape} differs from the shape {like.shape} of "
            f"'{like.source or 'like'}' whose geometry it should take"
        )
    return array


def _label_array(mask: np.ndarray, path: Path) -> np.ndarray:
    """The mask as uint8 (uint16 above 255 labels), refusing values that are not label ids."""
    if mask.dtype == bool:
        return mask.astype(np.uint8)
    if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
        raise MedsegError(f"Cannot write mask '{path}': dtype {mask.dtype} is not a label type")
    if mask.size == 0:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.isfinite(mask)):
            raise MedsegError(f"Cannot write mask '{path}': it holds NaN or infinite values")
        if not np.array_equal(mask, np.round(mask)):
            raise MedsegError(
                f"Cannot write mask '{path}': it holds non-integer values (e.g. probabilities); "
                "threshold or argmax first, or use save_volume for float maps"
            )
    lo, hi = mask.min(), mask.max()
    if lo < 0:
        raise MedsegError(f"Cannot write mask '{path}': it holds negative labels (min {lo})")
    if hi > np.iinfo(np.uint16).max:
        raise MedsegError(f"Cannot write mask '{path}': label {hi} exceeds the uint16 range")
    return mask.astype(np.uint8 if hi <= np.iinfo(np.uint8).max else np.uint16)


def _write(
    array: np.ndarray, like: Volume, path: Path, suffix: str, overwrite: bool, kind: Literal["mask", "volume"]
) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        if suffix in NIFTI_SUFFIXES:
            write_nifti(array, like, tmp, kind=kind)
        else:
            write_itk(array, like.affine, tmp)
    return path


def save_mask(
    mask: np.ndarray | Volume, like: Volume | ChannelStack, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Writes a label map with the exact geometry of ``like``.

    NIfTI output from a NIfTI ``like`` copies its header: same affine, same qform/sform and codes. From a DICOM
    (or NRRD/MHA) ``like`` the NIfTI gets its affine with qform/sform code 1 (scanner). NRRD/MHA output gets
    ``like``'s grid in ITK's LPS convention. The file is written to a temp file and renamed, so it is either
    complete or absent.

    Args:
        mask: Integer labels, shape ``like.shape`` (a Volume on ``like``'s grid is accepted too). Written as
            uint8, or uint16 when a label exceeds 255.
        like: The scan whose grid the mask is on (a case's channels: their first channel's, the case's grid).
        path: Output file: ``.nii.gz`` (used when ``path`` has no extension), ``.nii``, ``.nrrd`` or ``.mha``.
        overwrite: Replace an existing file.

    Returns:
        The path written.

    Raises:
        GeometryMismatchError: ``mask``'s shape differs from ``like``'s.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        MedsegError: Unsupported extension, or values that are not labels (negative, non-integer, > 65535).
    """
    path, suffix = _output_path(path)
    like = like.reference if isinstance(like, ChannelStack) else like
    labels = _label_array(_array_on_grid(mask, like, path, "mask"), path)
    return _write(labels, like, path, suffix, overwrite, "mask")


def save_volume(
    array: np.ndarray | Volume, like: Volume | ChannelStack, path: str | Path, *, overwrite: bool = False
) -> Path:
    """Writes a 3D float map (e.g. a class probability) as float32 with the exact geometry of ``like``.

    Same geometry rules, formats and atomic write as :func:`save_mask`.

    Args:
        array: Values of shape ``like.shape``; must be finite.
        like: The scan whose grid the map is on (a case's channels: their first channel's).
        path: Output file (``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``).
        overwrite: Replace an existing file.

    Returns:
        The path written.

    Raises:
        GeometryMismatchError: Shape differs from ``like``'s.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        MedsegError: Unsupported extension or non-finite values.
    """
    path, suffix = _output_path(path)
    like = like.reference if isinstance(like, ChannelStack) else like
    values = _array_on_grid(array, like, path, "volume").astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise MedsegError(f"Cannot write volume '{path}': it holds NaN or infinite values (or exceeds float32)")
    return _write(values, like, path, suffix, overwrite, "volume")
