"""The DICOM series behind a Volume: its instances (headers), and the voxel <-> frame-pixel mapping of each.

DICOM SEG and RTSTRUCT objects point at the source series' SOP instances, so writing or reading them needs the
datasets of the series a :class:`~medseg.volume.Volume` was read from. A Volume keeps only its array, affine and
``source`` (the series folder, see DESIGN.md); this module finds the instances again from that folder and maps
every image plane (a single-frame instance, or one frame of an enhanced multi-frame instance) to the voxels it
covers **by geometry** (ImagePositionPatient, ImageOrientationPatient, PixelSpacing against the Volume's affine;
a multi-frame file's per-frame functional groups). Frames are therefore matched to slices by position and SOP
instance (and frame number), never by file or frame order, and whatever axis order medseg uses internally.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medseg.errors import ForeignReferenceError, MedsegError
from medseg.io.dicom_frames import frame_geometries, is_mosaic
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
    """The image planes of the series a Volume came from, each with where its pixels lie on the Volume's grid.

    A plane is a single-frame instance (one file per slice) or one frame of an enhanced multi-frame instance
    (Enhanced / Legacy Converted Enhanced MR and CT: one file holding every slice). DICOM SEG frames and RTSTRUCT
    contour images reference a plane by its SOPInstanceUID and, in a multi-frame instance, its frame number.

    Attributes:
        datasets: Per plane, its instance's header (no pixel data), in ascending position along the slice
            normal; a multi-frame instance's header stands for each of its frames.
        grids: Per plane, a 3x3 int array: the voxel ``(i, j, k)`` of pixel (row 0, column 0), then the voxel
            step for one row down and for one column right (each a unit step along one volume axis).
        frame_numbers: Per plane, its 1-based frame number in a multi-frame instance; ``None`` for a single-frame
            instance.
        matrices: Per plane, the 4x4 map from ``(column, row, 0, 1)`` to LPS mm (:func:`pixel_to_lps`).
    """

    datasets: tuple[Dataset, ...]
    grids: tuple[np.ndarray, ...]
    frame_numbers: tuple[int | None, ...]
    matrices: tuple[np.ndarray, ...]

    @property
    def series_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.datasets[0].get("FrameOfReferenceUID", ""))

    @functools.cached_property
    def sop_uids(self) -> list[str]:
        """Per plane, its instance's SOPInstanceUID (repeated for the frames of a multi-frame instance)."""
        return [str(ds.SOPInstanceUID) for ds in self.datasets]

    @functools.cached_property
    def _planes_by_reference(self) -> dict[tuple[str, int | None], int]:
        # Built once: an RTSTRUCT of a CT looks a plane up for each of its thousands of contours.
        return {key: n for n, key in enumerate(zip(self.sop_uids, self.frame_numbers, strict=True))}

    @property
    def multi_frame(self) -> bool:
        """Whether the planes are the frames of one multi-frame instance."""
        return self.frame_numbers[0] is not None

    @property
    def instances(self) -> list[Dataset]:
        """The instance headers, each once (in plane order; one for a multi-frame series)."""
        seen: dict[str, Dataset] = {}
        for ds in self.datasets:
            seen.setdefault(str(ds.SOPInstanceUID), ds)
        return list(seen.values())

    def plane_index(self, sop_uid: str, frame_number: int | None) -> int | None:
        """The plane that instance ``sop_uid`` (frame ``frame_number`` of a multi-frame one) is, or ``None``."""
        return self._planes_by_reference.get((str(sop_uid), None if frame_number is None else int(frame_number)))

    def writing_order(self) -> list[int]:
        """Plane indices in the order a SEG's frames follow its source images: position order for single-frame
        instances (written as ``source_images`` in that order), frame-number order for a multi-frame one."""
        if not self.multi_frame:
            return list(range(len(self.datasets)))
        return sorted(range(len(self.datasets)), key=lambda n: int(self.frame_numbers[n] or 0))

    def rows_columns(self, n: int) -> tuple[int, int]:
        """Pixel rows and columns of plane ``n``."""
        return int(self.datasets[n].Rows), int(self.datasets[n].Columns)

    def _index(self, n: int) -> tuple[np.ndarray, ...]:
        origin, step_row, step_col = self.grids[n]
        rows, cols = self.rows_columns(n)
        r = np.arange(rows)[:, None, None]
        c = np.arange(cols)[None, :, None]
        idx = origin + r * step_row + c * step_col
        return idx[..., 0], idx[..., 1], idx[..., 2]

    def frame(self, array: np.ndarray, n: int) -> np.ndarray:
        """Pixels ``(Rows, Columns)`` of plane ``n`` taken from a volume array on the Volume's grid."""
        return array[self._index(n)]

    def put(self, array: np.ndarray, n: int, frame: np.ndarray) -> None:
        """Writes the pixels ``(Rows, Columns)`` of plane ``n`` into a volume array on the Volume's grid."""
        array[self._index(n)] = frame


def pixel_to_lps(ds: Dataset) -> np.ndarray:
    """4x4 matrix from ``(column, row, 0, 1)`` of an image instance to LPS patient coordinates (mm)."""
    return _plane_matrix(ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing)


def _plane_matrix(position: Any, orientation: Any, pixel_spacing: Any) -> np.ndarray:
    iop = np.asarray(orientation, dtype=np.float64)
    row_dir, col_dir = iop[:3], iop[3:]
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)  # PixelSpacing = (between rows, between columns)
    m = np.eye(4)
    m[:3, 0] = row_dir * col_spacing
    m[:3, 1] = col_dir * row_spacing
    m[:3, 2] = np.cross(row_dir, col_dir)
    m[:3, 3] = np.asarray(position, dtype=np.float64)
    return m


def _voxel_grid(matrix: np.ndarray, rows: int, cols: int, volume: Volume) -> np.ndarray | None:
    """Where the pixels of a plane (``matrix``: :func:`pixel_to_lps`) lie on ``volume``'s grid (see
    :attr:`SourceSeries.grids`), or ``None`` when they are not exactly on its voxels (an affine map is, when its
    corners are)."""
    to_voxel = np.linalg.inv(volume.affine) @ RAS_TO_LPS @ matrix
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


def _covers(grids: list[np.ndarray], volume: Volume, rows: int, cols: int) -> bool:
    """Whether the planes cover every voxel of ``volume`` exactly once (full planes, one per slice index)."""
    axes = {(int(np.flatnonzero(g[1])[0]), int(np.flatnonzero(g[2])[0])) for g in grids}
    if len(axes) != 1:
        return False
    a_row, a_col = axes.pop()
    a_slice = 3 - a_row - a_col
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


def _planes(members: list[tuple[Path, Dataset]], folder: Path) -> list[tuple[Dataset, int | None, np.ndarray]] | None:
    """A series' image planes: ``(instance header, frame number or None, pixel_to_lps)`` each, or ``None`` for a
    series whose planes are not images a SEG / RTSTRUCT can reference: a mosaic, several multi-frame files, a
    classic multi-frame file or RT dose grid (no per-frame functional groups), frames without a place."""
    frames = [int(ds.get("NumberOfFrames", 1) or 1) for _, ds in members]
    if max(frames) == 1:
        try:
            return [(ds, None, pixel_to_lps(ds)) for _, ds in members]
        except (AttributeError, TypeError, ValueError):  # a slice without position: not one medseg read
            return None
    path, ds = members[0]
    enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
    if len(members) != 1 or not enhanced or is_mosaic(ds):
        return None
    try:
        geometries = frame_geometries(ds, path, folder)
    except MedsegError:
        return None
    return [
        (ds, g.index + 1, _plane_matrix(g.position, [*g.row_direction, *g.column_direction], g.pixel_spacing))
        for g in geometries
    ]


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
        planes = _planes(members, source)
        if planes is None or len(planes) not in volume.shape:
            continue
        found = [_voxel_grid(m, int(ds.Rows), int(ds.Columns), volume) for ds, _, m in planes]
        grids = [g for g in found if g is not None]
        if len(grids) != len(found) or not _covers(grids, volume, int(planes[0][0].Rows), int(planes[0][0].Columns)):
            continue
        normal = planes[0][2][:3, 2]
        order = np.argsort([float(m[:3, 3] @ normal) for _, _, m in planes])
        fits.append(
            SourceSeries(
                datasets=tuple(planes[i][0] for i in order),
                grids=tuple(grids[i] for i in order),
                frame_numbers=tuple(planes[i][1] for i in order),
                matrices=tuple(planes[i][2] for i in order),
            )
        )
    if not fits:
        raise ForeignReferenceError(
            f"No DICOM series in '{source}' covers the grid of the volume read from it (shape {volume.shape}) "
            "slice for slice; DICOM SEG / RTSTRUCT need the image series' instances (single-frame slices, or the "
            "frames of one enhanced multi-frame file)"
        )
    if len(fits) > 1:
        raise ForeignReferenceError(
            f"Several DICOM series in '{source}' fit the volume's grid ({', '.join(f.series_uid for f in fits)}); "
            "put the image series in a folder of its own"
        )
    return fits[0]
