"""The DICOM series behind a Volume: its instances (headers), and the voxel <-> frame-pixel mapping of each.

DICOM SEG and RTSTRUCT objects point at the source series' SOP instances, so writing or reading them needs the
datasets of the series a :class:`~medseg.volume.Volume` was read from. A Volume keeps only its array, affine and
``source`` (the series folder, see DESIGN.md); this module finds the instances again from that folder and maps
every instance to the voxels it covers **by geometry** (ImagePositionPatient, ImageOrientationPatient,
PixelSpacing against the Volume's affine). Frames are therefore matched to slices by position and SOP instance,
never by file or frame order, and whatever axis order medseg uses internally.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medseg.errors import ForeignReferenceError
from medseg.io.scans import is_dicom_file
from medseg.volume import RAS_TO_LPS, Volume

__all__ = [
    "RTSTRUCT_SOP_CLASS",
    "SEG_SOP_CLASS",
    "SourceSeries",
    "dicom_object_kind",
    "referenced_series_uids",
    "source_series",
]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
_SEG_UID = SEG_SOP_CLASS.encode()
_RTSTRUCT_UID = RTSTRUCT_SOP_CLASS.encode()
#: Bytes read to find the MediaStorageSOPClassUID (the file meta header comes right after the 132-byte preamble).
_META_BYTES = 1024
#: Largest distance (in voxels) between a frame pixel's centre and the nearest voxel centre still taken as "on it".
_ON_GRID_VOXELS = 0.01


def dicom_object_kind(path: str | Path) -> Literal["seg", "rtstruct"] | None:
    """``"seg"`` / ``"rtstruct"`` when ``path`` is a DICOM Segmentation / RT Structure Set file, else ``None``."""
    path = Path(path)
    if not path.is_file() or not is_dicom_file(path):
        return None
    try:
        with path.open("rb") as f:
            head = f.read(_META_BYTES)
    except OSError:
        return None
    # Fast path for the slices of a series (this runs for every file of every series read): a Part-10 file names
    # its SOP class in the file meta header near the start; without either label UID there it is no label object.
    if head[128:132] == b"DICM" and _SEG_UID not in head and _RTSTRUCT_UID not in head:
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except Exception:  # not readable as DICOM at all: for the image readers to report
        return None
    sop, modality = str(ds.get("SOPClassUID", "")), str(ds.get("Modality", "")).upper()
    if sop == SEG_SOP_CLASS or modality == "SEG":
        return "seg"
    if sop == RTSTRUCT_SOP_CLASS or modality == "RTSTRUCT":
        return "rtstruct"
    return None


def referenced_series_uids(path: str | Path) -> set[str]:
    """The SeriesInstanceUIDs a SEG (ReferencedSeriesSequence) or RTSTRUCT (ReferencedFrameOfReferenceSequence >
    RTReferencedStudySequence > RTReferencedSeriesSequence) says it was drawn on; empty when it names none or
    cannot be read (the series is then checked instance by instance when the labels are read)."""
    try:
        ds = pydicom.dcmread(
            path,
            stop_before_pixels=True,
            specific_tags=["ReferencedSeriesSequence", "ReferencedFrameOfReferenceSequence"],
        )
    except Exception:
        return set()
    uids = {str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])}
    for frame in ds.get("ReferencedFrameOfReferenceSequence", []):
        for study in frame.get("RTReferencedStudySequence", []):
            uids |= {str(item.get("SeriesInstanceUID", "")) for item in study.get("RTReferencedSeriesSequence", [])}
    return uids - {""}


@dataclass(frozen=True)
class SourceSeries:
    """The instances of the series a Volume came from, each with where its pixels lie on the Volume's grid.

    Attributes:
        datasets: Headers (no pixel data) in ascending position along the slice normal.
        grids: Per dataset, a 3x3 int array: the voxel ``(i, j, k)`` of pixel (row 0, column 0), then the voxel
            step for one row down and for one column right (each a unit step along one volume axis).
    """

    datasets: tuple[Dataset, ...]
    grids: tuple[np.ndarray, ...]

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].get("FrameOfReferenceUID", ""))

    @property
    def sop_uids(self) -> list[str]:
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    def _index(self, n: int) -> tuple[np.ndarray, ...]:
        origin, step_row, step_col = self.grids[n]
        r = np.arange(int(self.datasets[n].Rows))[:, None, None]
        c = np.arange(int(self.datasets[n].Columns))[None, :, None]
        idx = origin + r * step_row + c * step_col
        return idx[..., 0], idx[..., 1], idx[..., 2]

    def frame(self, array: np.ndarray, n: int) -> np.ndarray:
        """Pixels ``(Rows, Columns)`` of source instance ``n`` taken from a volume array on the Volume's grid."""
        return array[self._index(n)]

    def put(self, array: np.ndarray, n: int, frame: np.ndarray) -> None:
        """Writes the pixels ``(Rows, Columns)`` of instance ``n`` into a volume array on the Volume's grid."""
        array[self._index(n)] = frame


def pixel_to_lps(ds: Dataset) -> np.ndarray:
    """4x4 matrix from ``(column, row, 0, 1)`` of an image instance to LPS patient coordinates (mm)."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)  # PixelSpacing = (between rows, between columns)
    m = np.eye(4)
    m[:3, 0] = row_dir * col_spacing
    m[:3, 1] = col_dir * row_spacing
    m[:3, 2] = np.cross(row_dir, col_dir)
    m[:3, 3] = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
    return m


def _voxel_grid(ds: Dataset, volume: Volume) -> np.ndarray | None:
    """Where the pixels of ``ds`` lie on ``volume``'s grid (see :attr:`SourceSeries.grids`), or ``None`` when
    they are not exactly on its voxels (an affine map is, when its corners are)."""
    to_voxel = np.linalg.inv(volume.affine) @ RAS_TO_LPS @ pixel_to_lps(ds)
    rows, cols = int(ds.Rows), int(ds.Columns)
    corners = np.array([[0, 0, 0, 1], [0, rows - 1, 0, 1], [cols - 1, 0, 0, 1], [cols - 1, rows - 1, 0, 1]], float)
    at = (to_voxel @ corners.T)[:3].T
    if np.abs(at - np.round(at)).max() > _ON_GRID_VOXELS:
        return None
    at = np.round(at).astype(np.int64)
    if (at < 0).any() or (at >= np.array(volume.shape)).any():
        return None
    step_row = (at[1] - at[0]) // max(rows - 1, 1)
    step_col = (at[2] - at[0]) // max(cols - 1, 1)
    if np.abs(step_row).sum() != 1 or np.abs(step_col).sum() != 1 or (step_row * step_col).any():
        return None
    return np.stack([at[0], step_row, step_col])


def _covers(grids: list[np.ndarray], volume: Volume, members: list[Dataset]) -> bool:
    """Whether the slices cover every voxel of ``volume`` exactly once (full planes, one per slice index)."""
    axes = {(int(np.flatnonzero(g[1])[0]), int(np.flatnonzero(g[2])[0])) for g in grids}
    if len(axes) != 1:
        return False
    a_row, a_col = axes.pop()
    a_slice = 3 - a_row - a_col
    rows, cols = int(members[0].Rows), int(members[0].Columns)
    if (volume.shape[a_row], volume.shape[a_col]) != (rows, cols):
        return False
    return sorted(int(g[0][a_slice]) for g in grids) == list(range(volume.shape[a_slice]))


def _read_headers(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        meta = getattr(ds, "file_meta", None)
        for key, meta_key in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            # Some exports (e.g. the TotalSegmentator example CT) leave these empty and keep them only in the file
            # meta header; references to the instance need them.
            if not ds.get(key) and meta is not None and meta.get(meta_key):
                setattr(ds, key, meta.get(meta_key))
        if str(ds.get("SOPClassUID", "")) in (SEG_SOP_CLASS, RTSTRUCT_SOP_CLASS) or "Rows" not in ds:
            continue
        groups.setdefault(str(ds.get("SeriesInstanceUID", "")), []).append((path, ds))
    return groups


def source_series(volume: Volume) -> SourceSeries:
    """Finds the DICOM series ``volume`` was read from and maps each instance onto the volume's grid.

    Args:
        volume: A Volume read from a DICOM series folder (``volume.source`` is the folder or one of its files).

    Returns:
        The series' instance headers (position order) with the voxel indices of their pixels.

    Raises:
        ForeignReferenceError: ``volume`` was not read from a DICOM series, or no series in its folder (or
            more than one) covers its grid exactly, slice for slice.
    """
    source = Path(volume.source) if volume.source is not None else None
    if source is not None and source.is_file():
        source = source.parent if is_dicom_file(source) else None
    if source is None or not source.is_dir():
        raise ForeignReferenceError(
            f"'{volume.source or 'volume'}' was not read from a DICOM series folder; DICOM SEG / RTSTRUCT objects "
            "reference the instances of a DICOM image series (use a NIfTI/NRRD/MHA output for other scans)"
        )
    fits: list[SourceSeries] = []
    for _, members in sorted(_read_headers(source).items()):
        if len(members) not in volume.shape:
            continue
        if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in members):
            continue
        found = [_voxel_grid(ds, volume) for _, ds in members]
        grids = [g for g in found if g is not None]
        if len(grids) != len(found) or not _covers(grids, volume, [ds for _, ds in members]):
            continue
        normal = np.cross(*np.asarray(members[0][1].ImageOrientationPatient, float).reshape(2, 3))
        order = np.argsort([float(np.asarray(ds.ImagePositionPatient, float) @ normal) for _, ds in members])
        fits.append(
            SourceSeries(
                datasets=tuple(members[i][1] for i in order),
                grids=tuple(grids[i] for i in order),
            )
        )
    if not fits:
        raise ForeignReferenceError(
            f"No single-frame DICOM series in '{source}' covers the grid of the volume read from it "
            f"(shape {volume.shape}) slice for slice; DICOM SEG / RTSTRUCT need the image series' instances"
        )
    if len(fits) > 1:
        raise ForeignReferenceError(
            f"Several DICOM series in '{source}' fit the volume's grid ({', '.join(f.series_uid for f in fits)}); "
            "put the image series in a folder of its own"
        )
    return fits[0]
