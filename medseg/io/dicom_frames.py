"""One DICOM file holding a whole volume: multi-frame images, RT dose grids and Siemens mosaics.

These files put every slice in one file, so the per-slice facts the series reader checks (position,
orientation, pixel spacing, rescale) live elsewhere:

- **Enhanced multi-frame** (Enhanced MR/CT, Legacy Converted): per-frame functional groups
  (``PlanePositionSequence``, ``PlaneOrientationSequence``, ``PixelMeasuresSequence``,
  ``PixelValueTransformationSequence``), each per frame or shared by all frames.
- **RT dose** (and other "classic" multi-frame files): one ``ImagePositionPatient`` plus a
  ``GridFrameOffsetVector`` giving each frame's offset along the slice normal; voxel values are stored integers
  times ``DoseGridScaling`` (dose in Gy when ``DoseUnits`` is ``GY``).
- **Siemens mosaic**: one 2D image tiling N slices; the CSA image header gives N
  (``NumberOfImagesInMosaic``) and the slice normal (``SliceNormalVector``).

This module only extracts those facts from the header (with pydicom, and nibabel's CSA reader for mosaics)
and decodes the voxels; :func:`medseg.io.dicom.load_dicom` runs the same position / duplicate / spacing
checks on the frames that it runs on the files of a series, so a file is read exactly or refused.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import MissingDecoderError, MultipleVolumesError, UnreadableScanError
from medseg.io.dicom_pixels import INSTALL_HINT, UNCOMPRESSED_SYNTAXES, transfer_syntax
from medseg.io.geometry import affine_from_itk
from medseg.volume import Volume

__all__ = [
    "FrameGeometry",
    "check_one_volume",
    "frame_geometries",
    "frame_pixels",
    "is_mosaic",
    "load_mosaic",
    "read_dataset",
]

log = logging.getLogger(__name__)

#: Frames closer than this (mm) along the slice normal are "at the same position" (as for a series' files).
DUPLICATE_MM = 1e-3
#: Largest angle (degrees) between a mosaic's CSA slice normal and row x column still taken as orthogonal.
_MOSAIC_NORMAL_DEG = 0.1
#: Tools named in messages for files medseg does not split itself.
SPLIT_HINT = (
    "split it into one volume per file or folder first, e.g. with dcm2niix (it writes one NIfTI per echo / "
    "diffusion direction / time point) or pydicom, and give medseg one of those"
)


@dataclass(frozen=True)
class FrameGeometry:
    """Where one frame lies and how its stored values become voxel values.

    Attributes:
        index: 0-based frame number in the file.
        position: LPS mm of the frame's first pixel (ImagePositionPatient).
        row_direction: LPS unit vector along a row (increasing column index; IOP[:3]).
        column_direction: LPS unit vector down a column (increasing row index; IOP[3:]).
        pixel_spacing: (between rows, between columns) in mm (PixelSpacing).
        slope: Rescale slope (times DoseGridScaling for RT dose).
        intercept: Rescale intercept.
    """

    index: int
    position: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    pixel_spacing: tuple[float, float]
    slope: float
    intercept: float


def read_dataset(path: Path, folder: Path) -> Any:
    """The file's full pydicom dataset (pixels included).

    Raises:
        UnreadableScanError: pydicom cannot parse it.
        MissingDecoderError: pydicom is not installed.
    """
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a runtime dependency
        raise MissingDecoderError(
            folder, f"'{path.name}' is a multi-frame/mosaic/RT dose file, read with pydicom: {INSTALL_HINT}"
        ) from exc
    try:
        return pydicom.dcmread(str(path))
    except Exception as exc:  # pydicom raises InvalidDicomError, OSError, ValueError, ...
        raise UnreadableScanError(folder, f"DICOM file '{path.name}' cannot be read by pydicom ({exc})") from exc


def is_mosaic(ds: Any) -> bool:
    """Whether ``ds`` is a Siemens mosaic (``MOSAIC`` in ImageType)."""
    return "MOSAIC" in [str(v).upper() for v in ds.get("ImageType", [])]


def _item(ds: Any, sequence: str) -> Any | None:
    seq = ds.get(sequence)
    return seq[0] if seq else None


def _group_value(per_frame: Any | None, shared: Any | None, sequence: str, keyword: str) -> Any | None:
    """``keyword`` inside ``sequence`` of the frame's own functional group, else of the shared group."""
    for group in (per_frame, shared):
        if group is None:
            continue
        item = _item(group, sequence)
        if item is not None and item.get(keyword) is not None:
            return item.get(keyword)
    return None


def _floats(value: Any, n: int, what: str, path: Path, folder: Path) -> np.ndarray:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UnreadableScanError(folder, f"'{path.name}': {what} is not numeric ({value!r})") from exc
    if out.shape != (n,) or not np.all(np.isfinite(out)):
        raise UnreadableScanError(folder, f"'{path.name}': {what} must be {n} finite numbers, got {value!r}")
    return out


def _rescale(per_frame: Any | None, shared: Any | None, ds: Any) -> tuple[float, float]:
    slope = _group_value(per_frame, shared, "PixelValueTransformationSequence", "RescaleSlope")
    inter = _group_value(per_frame, shared, "PixelValueTransformationSequence", "RescaleIntercept")
    slope = ds.get("RescaleSlope") if slope is None else slope
    inter = ds.get("RescaleIntercept") if inter is None else inter
    return float(slope if slope not in (None, "") else 1.0), float(inter if inter not in (None, "") else 0.0)


def frame_geometries(ds: Any, path: Path, folder: Path) -> list[FrameGeometry]:
    """Position, orientation, pixel spacing and rescale of every frame of a multi-frame (or RT dose) file.

    Raises:
        UnreadableScanError: A frame without position or orientation, a missing pixel spacing, a classic
            multi-frame file without ``GridFrameOffsetVector`` (its frames cannot be placed in space).
    """
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame_seq = ds.get("PerFrameFunctionalGroupsSequence")
    shared = _item(ds, "SharedFunctionalGroupsSequence")
    dose = ds.get("DoseGridScaling")
    dose_scale = 1.0 if dose in (None, "") else float(dose)
    if str(ds.get("Modality", "")).upper() == "RTDOSE" and dose in (None, ""):
        raise UnreadableScanError(
            folder, f"'{path.name}' is an RT dose grid without DoseGridScaling, so its stored values have no dose unit"
        )
    if per_frame_seq is not None or shared is not None:
        if per_frame_seq is not None and len(per_frame_seq) != n:
            raise UnreadableScanError(
                folder,
                f"'{path.name}' has {n} frames but {len(per_frame_seq)} PerFrameFunctionalGroupsSequence items",
            )
        frames = []
        for i in range(n):
            own = per_frame_seq[i] if per_frame_seq is not None else None
            ipp = _group_value(own, shared, "PlanePositionSequence", "ImagePositionPatient")
            iop = _group_value(own, shared, "PlaneOrientationSequence", "ImageOrientationPatient")
            spacing = _group_value(own, shared, "PixelMeasuresSequence", "PixelSpacing")
            if ipp is None or iop is None:
                raise UnreadableScanError(
                    folder,
                    f"frame {i + 1} of {n} in '{path.name}' has no ImagePositionPatient/ImageOrientationPatient "
                    "(PlanePositionSequence / PlaneOrientationSequence), so it cannot be placed in space",
                )
            if spacing is None:
                spacing = ds.get("PixelSpacing")
            frames.append(_frame(i, ipp, iop, spacing, _rescale(own, shared, ds), dose_scale, path, folder))
        return frames
    # A classic multi-frame file: one plane for the file, frame offsets along its normal.
    ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if ipp is None or iop is None:
        raise UnreadableScanError(
            folder,
            f"'{path.name}' ({n} frame(s)) has no ImagePositionPatient/ImageOrientationPatient, so its frames "
            "cannot be placed in space",
        )
    first = _frame(0, ipp, iop, ds.get("PixelSpacing"), _rescale(None, None, ds), dose_scale, path, folder)
    offsets_value = ds.get("GridFrameOffsetVector")
    if offsets_value is None:
        if n == 1:
            return [first]
        raise UnreadableScanError(
            folder,
            f"'{path.name}' holds {n} frames but gives only one ImagePositionPatient and no GridFrameOffsetVector "
            "or per-frame functional groups, so the frames' positions are unknown",
        )
    offsets = _floats(offsets_value, n, "GridFrameOffsetVector", path, folder)
    normal = np.cross(first.row_direction, first.column_direction)
    if offsets[0] != 0.0 and abs(float(first.position @ normal) - offsets[0]) > DUPLICATE_MM:
        # DICOM allows absolute offsets (the frames' coordinates along the normal) only when the first equals
        # the plane's own coordinate; anything else is ambiguous.
        raise UnreadableScanError(
            folder,
            f"'{path.name}': GridFrameOffsetVector starts at {offsets[0]} mm, neither 0 (relative offsets) nor "
            f"the first frame's position along the slice normal ({float(first.position @ normal):.3f} mm)",
        )
    return [
        FrameGeometry(
            index=i,
            position=first.position + (offsets[i] - offsets[0]) * normal,
            row_direction=first.row_direction,
            column_direction=first.column_direction,
            pixel_spacing=first.pixel_spacing,
            slope=first.slope,
            intercept=first.intercept,
        )
        for i in range(n)
    ]


def _frame(
    index: int,
    ipp: Any,
    iop: Any,
    spacing: Any,
    rescale: tuple[float, float],
    dose_scale: float,
    path: Path,
    folder: Path,
) -> FrameGeometry:
    if spacing is None:
        raise UnreadableScanError(folder, f"'{path.name}' has no PixelSpacing (PixelMeasuresSequence)")
    position = _floats(ipp, 3, "ImagePositionPatient", path, folder)
    orientation = _floats(iop, 6, "ImageOrientationPatient", path, folder)
    pixel = _floats(spacing, 2, "PixelSpacing", path, folder)
    if np.any(pixel <= 0):
        raise UnreadableScanError(folder, f"'{path.name}': PixelSpacing must be positive, got {pixel.tolist()}")
    row, col = orientation[:3], orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise UnreadableScanError(
            folder, f"'{path.name}': ImageOrientationPatient {orientation.tolist()} is not two orthogonal unit vectors"
        )
    slope, intercept = rescale
    return FrameGeometry(
        index=index,
        position=position,
        row_direction=row / np.linalg.norm(row),
        column_direction=col / np.linalg.norm(col),
        pixel_spacing=(float(pixel[0]), float(pixel[1])),
        slope=slope * dose_scale,
        intercept=intercept * dose_scale,
    )


def check_one_volume(along: np.ndarray, n_frames: int, path: Path, folder: Path) -> None:
    """Refuses a file whose frames repeat positions: it holds several volumes (echoes, directions, time points).

    Args:
        along: Each frame's position along the slice normal (mm).
        n_frames: Number of frames (``len(along)``).
        path: The file, for the message.
        folder: Its series folder, for the message.

    Raises:
        MultipleVolumesError: Two or more frames at one position.
    """
    ordered = np.sort(along)
    # Group positions that lie within DUPLICATE_MM of their neighbour.
    starts = np.concatenate([[True], np.diff(ordered) >= DUPLICATE_MM])
    n_positions = int(starts.sum())
    if n_positions == n_frames:
        return
    counts = np.diff(np.flatnonzero(np.concatenate([starts, [True]])))
    if np.all(counts == counts[0]):
        what = f"{int(counts[0])} volumes of {n_positions} slice positions each ({n_frames} frames)"
    else:
        what = (
            f"{n_frames} frames at only {n_positions} slice positions ({int(counts.min())} to {int(counts.max())} "
            "frames per position)"
        )
    raise MultipleVolumesError(
        folder,
        f"the multi-frame file '{path.name}' holds {what}, e.g. several echoes, diffusion directions or time "
        f"points; medseg reads one 3D volume: {SPLIT_HINT}",
    )


def frame_pixels(ds: Any, frames: list[FrameGeometry], path: Path, folder: Path) -> np.ndarray:
    """Voxel values of every frame, ``(frames, rows, columns)``, with each frame's rescale (and dose scaling).

    Unscaled files keep their stored integer type; integral rescales (CT HU) give int16/int32; anything else
    (RT dose, fractional slopes) float32.

    Raises:
        UnreadableScanError: Colour pixels, or pixel data pydicom cannot decode.
        MissingDecoderError: Compressed pixel data without an installed decoder.
    """
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        raise UnreadableScanError(folder, f"'{path.name}' holds colour (RGB) images; medseg reads greyscale scans")
    scales = {(f.slope, f.intercept) for f in frames}
    try:
        stored = np.asarray(ds.pixel_array)
    except Exception as exc:  # pydicom signals a missing decoder with RuntimeError/NotImplementedError
        syntax = transfer_syntax(path)
        if syntax in UNCOMPRESSED_SYNTAXES:
            raise UnreadableScanError(folder, f"the pixel data of '{path.name}' cannot be decoded ({exc})") from exc
        if len(scales) == 1 and ds.get("DoseGridScaling") in (None, ""):
            # GDCM (bundled with SimpleITK) decodes JPEG / JPEG 2000 / RLE itself and applies one rescale to all
            # frames, which is exact when every frame has the same one (it ignores DoseGridScaling).
            decoded = _gdcm_frames(path, len(frames))
            if decoded is not None:
                return decoded
        raise MissingDecoderError(
            folder,
            f"'{path.name}' is compressed ({syntax}) and neither pydicom ({exc}) nor GDCM could decode it; "
            f"install the DICOM decoders with: {INSTALL_HINT}",
        ) from exc
    if stored.ndim == 2:
        stored = stored[np.newaxis]
    if stored.shape[0] != len(frames):
        raise UnreadableScanError(
            folder, f"'{path.name}' decodes to {stored.shape[0]} frames, but its header describes {len(frames)}"
        )
    if scales == {(1.0, 0.0)}:
        return stored
    slope = np.array([f.slope for f in frames])[:, None, None]
    inter = np.array([f.intercept for f in frames])[:, None, None]
    values = stored.astype(np.float64) * slope + inter
    if all(float(s).is_integer() and float(i).is_integer() for s, i in scales):
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if values.min() >= info.min and values.max() <= info.max:
                return values.astype(dtype)
    return values.astype(np.float32)


def _gdcm_frames(path: Path, n_frames: int) -> np.ndarray | None:
    """All frames decoded (and rescaled) by SimpleITK's GDCM, ``(frames, rows, columns)``; None if it cannot."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path), imageIO="GDCMImageIO")
    except RuntimeError:
        return None
    if image.GetNumberOfComponentsPerPixel() != 1:
        return None
    array = sitk.GetArrayFromImage(image)  # (frames, rows, columns), in stored frame order
    if array.ndim == 2:
        array = array[np.newaxis]
    return array if array.shape[0] == n_frames else None


def describe_dose(ds: Any, path: Path) -> None:
    """Logs what an RT dose grid's voxel values mean (the Volume carries no unit)."""
    units = str(ds.get("DoseUnits", "")).upper()
    meaning = {"GY": "dose in Gy", "RELATIVE": "relative dose (no absolute unit)"}.get(units, f"units {units!r}")
    log.info(
        "%s: RT dose grid, stored values x DoseGridScaling %s; voxel values are %s",
        path,
        ds.get("DoseGridScaling"),
        meaning,
    )


def load_mosaic(ds: Any, path: Path, folder: Path) -> Volume:
    """Unpacks a Siemens mosaic (one 2D image tiling N slices) into a 3D volume.

    The tiles are read row by row (slice k is tile ``(k // m, k % m)`` of an ``m x m`` grid, ``m =
    ceil(sqrt(N))``). ImagePositionPatient of a mosaic is that of the whole tiled image; the first slice's
    corner is shifted by half the unused mosaic size along rows and columns (as dcm2niix and nibabel do). Slices
    follow the CSA ``SliceNormalVector`` at ``SpacingBetweenSlices``.

    Raises:
        UnreadableScanError: No CSA header / NumberOfImagesInMosaic, no SpacingBetweenSlices, a slice normal
            not perpendicular to the image plane, colour pixels, a mosaic not divisible into its tiles.
    """
    with warnings.catch_warnings():
        # nibabel.nicom warns on import that its DICOM *readers* are experimental; only its CSA parser is used.
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader

    name = path.name
    try:
        csa = csareader.get_csa_header(ds, "image")
    except Exception as exc:  # nibabel's CSAReadError and struct errors on a damaged header
        raise UnreadableScanError(
            folder, f"'{name}' is a Siemens mosaic whose CSA header cannot be read ({exc})"
        ) from exc
    n = csareader.get_n_mosaic(csa) if csa else None
    normal_csa = csareader.get_slice_normal(csa) if csa else None
    if not n or normal_csa is None:
        raise UnreadableScanError(
            folder,
            f"'{name}' is a Siemens mosaic (ImageType MOSAIC) without NumberOfImagesInMosaic / SliceNormalVector "
            "in its CSA header, so the slices cannot be unpacked; convert it with dcm2niix first",
        )
    (frame,) = frame_geometries(ds, path, folder)
    spacing_between = ds.get("SpacingBetweenSlices")
    if spacing_between in (None, "") or float(spacing_between) <= 0:
        raise UnreadableScanError(
            folder,
            f"'{name}' is a Siemens mosaic without SpacingBetweenSlices, so the slice spacing is unknown "
            "(SliceThickness is not the spacing); convert it with dcm2niix first",
        )
    normal = np.asarray(normal_csa, dtype=np.float64)
    normal /= np.linalg.norm(normal)
    plane_normal = np.cross(frame.row_direction, frame.column_direction)
    if abs(float(normal @ plane_normal)) < math.cos(math.radians(_MOSAIC_NORMAL_DEG)):
        raise UnreadableScanError(
            folder,
            f"'{name}': the mosaic's CSA SliceNormalVector {normal.round(4).tolist()} is not perpendicular to the "
            "image plane (ImageOrientationPatient); a voxel grid cannot represent it",
        )
    pixels = frame_pixels(ds, [frame], path, folder)[0]  # (mosaic rows, mosaic columns)
    m = math.ceil(math.sqrt(n))
    rows, cols = pixels.shape
    if rows % m or cols % m:
        raise UnreadableScanError(
            folder, f"'{name}': a {rows}x{cols} mosaic cannot hold a {m}x{m} grid of {n} slices (sizes not divisible)"
        )
    tile_rows, tile_cols = rows // m, cols // m
    # (m, tile_rows, m, tile_cols) -> tiles in row-major order -> the first n are the slices.
    tiles = pixels.reshape(m, tile_rows, m, tile_cols).transpose(0, 2, 1, 3).reshape(m * m, tile_rows, tile_cols)[:n]
    array = np.ascontiguousarray(tiles.transpose(2, 1, 0))  # (columns, rows, slices) = (I, J, K)
    row_spacing, col_spacing = frame.pixel_spacing
    corner = (
        frame.position
        + frame.row_direction * col_spacing * (cols - tile_cols) / 2.0
        + frame.column_direction * row_spacing * (rows - tile_rows) / 2.0
    )
    direction = np.column_stack([frame.row_direction, frame.column_direction, normal])
    affine = affine_from_itk(np.array([col_spacing, row_spacing, float(spacing_between)]), corner, direction)
    return Volume(array=array, affine=affine, source=folder)
