"""NIfTI (``.nii``, ``.nii.gz``) through nibabel, keeping the header so masks carry the scan's exact geometry.

A mask written for a NIfTI scan gets a copy of the scan's header: the same affine, the same qform and sform
*and their codes* (the raw quaternion and srow fields are copied, not re-encoded), so nibabel, ITK/Slicer and
FSL all place it where they place the scan. Only the fields that describe the voxel values change (dtype,
scaling, display range, intent).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from medseg.errors import ColourImageError, UnreadableScanError
from medseg.io._arrays import check_finite, to_3d
from medseg.volume import Volume

NIFTI_SUFFIXES = (".nii.gz", ".nii")

#: Tolerance (mm) for "the Volume's affine is still the one in its header".
_HEADER_AFFINE_ATOL = 1e-5

_SCANNER = 1  # NIFTI_XFORM_SCANNER_ANAT: world coordinates from the scanner (what DICOM gives us).


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load_nifti(
    path: Path, *, channel: int | None = None, default_channel: int | None = None, nan_as_zero: bool = False
) -> Volume:
    """Reads a NIfTI-1/2 file into a Volume whose ``header`` is a copy of the file's header.

    Args:
        path: The file.
        channel: Channel / time point of a 4D file (explicit: a 3D file refuses any but 0).
        default_channel: The configured channel, used only when the file has channels.
        nan_as_zero: Read NaN voxels as 0 instead of refusing the file.

    Raises:
        UnreadableScanError: Not a NIfTI file, truncated or corrupt data, 4D without ``channel``, non-finite voxels.
        ColourImageError: RGB/RGBA voxels.
    """
    try:
        # mmap=False: read everything now, so a truncated file fails here (not later, deep in training) and no
        # file handle stays open on the input.
        img = nib.load(str(path), mmap=False)
    except FileNotFoundError as exc:
        raise UnreadableScanError(path, "no such file") from exc
    except Exception as exc:  # nibabel raises many types for bad headers; all mean "not a NIfTI file"
        raise UnreadableScanError(path, f"not a valid NIfTI file ({_describe(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise UnreadableScanError(path, f"nibabel read it as {type(img).__name__}, not as a NIfTI image")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError: the voxel data is cut short or corrupt
        raise UnreadableScanError(path, f"the voxel data is truncated or corrupt ({_describe(exc)})") from exc
    data = np.asarray(data)
    if data.dtype.fields is not None:
        # NIfTI RGB24 / RGBA32: nibabel returns a structured array (one field per colour), not numbers.
        raise ColourImageError(
            path,
            f"it holds colour voxels (NIfTI datatype {img.header.get_data_dtype()}, fields "
            f"{', '.join(data.dtype.names or ())}); medseg reads greyscale scans: convert it to one greyscale "
            "channel first (e.g. with nibabel: the mean of the R, G, B fields as float32)",
        )
    array = to_3d(data, path, channel, default_channel=default_channel)
    array = check_finite(array, path, nan_as_zero=nan_as_zero)
    return Volume(array=array, affine=img.affine, source=path, header=img.header.copy())


def _header_for(like: Volume, array: np.ndarray) -> nib.Nifti1Header:
    """A header for ``array`` on ``like``'s grid: ``like``'s own header when it still describes ``like.affine``."""
    src = like.header
    if isinstance(src, nib.Nifti1Header) and np.allclose(
        src.get_best_affine(), like.affine, atol=_HEADER_AFFINE_ATOL, rtol=0
    ):
        hdr = src.copy()  # raw qform/sform fields and codes untouched
    else:
        # DICOM/NRRD/MHA sources (or a NIfTI volume whose affine was changed): world coordinates are scanner
        # coordinates, stated in both forms so every reader agrees.
        hdr = nib.Nifti1Header()
        qcode = int(src["qform_code"]) if isinstance(src, nib.Nifti1Header) else 0
        scode = int(src["sform_code"]) if isinstance(src, nib.Nifti1Header) else 0
        hdr.set_qform(like.affine, code=qcode or _SCANNER)
        hdr.set_sform(like.affine, code=scode or _SCANNER)
        hdr.set_xyzt_units("mm")
    if hdr.get_data_shape() != array.shape:  # (re)setting the shape also resets unused pixdim entries
        hdr.set_data_shape(array.shape)
    hdr.set_data_dtype(array.dtype)
    return hdr


def write_nifti(array: np.ndarray, like: Volume, path: Path, *, kind: Literal["mask", "volume"]) -> None:
    """Writes ``array`` to ``path`` as NIfTI with ``like``'s geometry (non-atomic; callers wrap it).

    Args:
        array: ``(I, J, K)`` array already in its output dtype (``K = 1`` for a 2D NIfTI ``like``: written 2D).
        like: Volume whose grid (and NIfTI header, if any) the file takes.
        path: Destination (``.nii`` or ``.nii.gz``).
        kind: ``"mask"`` marks the file as a label map (NIfTI intent ``label``); ``"volume"`` clears the intent.
    """
    src = like.header
    if isinstance(src, nib.Nifti1Header) and len(src.get_data_shape()) == 2 and array.shape[2:] == (1,):
        array = array[:, :, 0]  # a 2D scan (read as one slice) gets a 2D mask: the file's own shape
    hdr = _header_for(like, array)
    # The source's display window and statistical intent describe the scan's values, not ours.
    hdr["cal_min"] = 0
    hdr["cal_max"] = 0
    hdr.set_intent("label" if kind == "mask" else "none", ())
    image_class = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    # affine=None: nibabel keeps the header's qform/sform as they are. An explicit slope 1 / intercept 0 (the
    # constructor would leave NaN) says "no scaling" to every reader; the data already has the header's dtype.
    img = image_class(array, None, header=hdr)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))
