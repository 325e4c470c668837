"""DICOM series folders: listing series, ordering slices by position, checking spacing, reading voxels.

Slices are ordered by ImagePositionPatient projected on the slice normal (never by file name or
InstanceNumber), the slice spacing comes from those positions (never from SliceThickness), and a series whose
positions do not form a regular grid (a missing slice, uneven spacing, several slices at one position, a
gantry tilt) is refused with an error that says where. Oblique orientations are kept as they are.

Each file's header is parsed once by SimpleITK's GDCM (series are grouped by SeriesInstanceUID from that
pass); the pixels of the chosen series are decoded by :mod:`medseg.io.dicom_pixels`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.errors import MultipleSeriesError, MultipleVolumesError, UnreadableScanError
from medseg.io import dicom_frames
from medseg.io.dicom_frames import SPLIT_HINT
from medseg.io.dicom_pixels import read_pixels, transfer_syntax
from medseg.io.dicom_source import referenced_series_uids
from medseg.io.geometry import affine_from_itk
from medseg.io.itk import sitk_message
from medseg.io.read_options import SERIES_HINT
from medseg.io.scans import NOT_SCAN_MODALITIES, find_scans, is_dicom_file
from medseg.io.segmentation import is_dicom_label_file
from medseg.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["DicomSeriesInfo", "list_dicom_series", "load_dicom", "series_uid_of_file", "transfer_syntax"]

# DICOM tags as SimpleITK's metadata keys.
_SERIES_UID = "0020|000e"
_SERIES_DESCRIPTION = "0008|103e"
_POSITION = "0020|0032"
_ORIENTATION = "0020|0037"
_SLOPE = "0028|1053"
_INTERCEPT = "0028|1052"
_IMAGE_TYPE = "0008|0008"
_MODALITY = "0008|0060"
_RTDOSE = "RTDOSE"

#: Slices closer than this (mm) along the normal are "at the same position".
_DUPLICATE_MM = 1e-3
#: A gap may differ from the median spacing by this fraction (plus 1 um) and still count as uniform.
_SPACING_RTOL = 0.01
#: Largest in-plane drift of slice positions (fraction of the in-plane pixel size) still taken as a straight stack.
_SHEAR_PIXELS = 0.05
#: Series listed in an error message (a folder of single-image series can hold hundreds).
_MAX_LISTED = 20
#: Tolerance on direction cosines and pixel spacing agreeing between slices of one series.
_ORIENTATION_ATOL = 1e-4


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One DICOM series found in a folder.

    Attributes:
        uid: SeriesInstanceUID (``""`` when the files carry none).
        description: SeriesDescription (``""`` when absent).
        n_slices: Number of files in the series.
        files: The series' files.
        modality: Modality (0008,0060) of its first file (``""`` when absent).
    """

    uid: str
    description: str
    n_slices: int
    files: tuple[Path, ...]
    modality: str = ""

    def __str__(self) -> str:
        uid = self.uid or "(no SeriesInstanceUID)"
        return f"{uid}  description={self.description!r}  {self.n_slices} slice(s)"


@dataclass(frozen=True)
class _Slice:
    """Header facts of one DICOM file, as GDCM reads them (ITK/LPS conventions)."""

    path: Path
    uid: str
    description: str
    position: np.ndarray  # (3,) LPS mm, ImagePositionPatient
    direction: np.ndarray  # 3x3, columns: row direction, column direction, normal
    spacing: np.ndarray  # (3,) mm; [0] along a row (between columns), [1] along a column, [2] GDCM's guess
    size: tuple[int, int, int]  # columns, rows, frames
    has_position: bool
    rescale: tuple[str, str]
    image_type: str = ""
    modality: str = ""

    @property
    def needs_own_reader(self) -> bool:
        """Multi-frame, Siemens mosaic or RT dose: read by :mod:`medseg.io.dicom_frames`, not as a slice."""
        return self.size[2] > 1 or "MOSAIC" in self.image_type.upper() or self.modality.upper() == _RTDOSE


def _file_reader(path: Path, folder: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.SetImageIO("GDCMImageIO")
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableScanError(folder, f"DICOM file '{path.name}' cannot be read ({sitk_message(exc)})") from exc
    return reader


def _meta(reader: sitk.ImageFileReader, key: str) -> str:
    return reader.GetMetaData(key).strip() if reader.HasMetaDataKey(key) else ""


def series_uid_of_file(path: str | Path) -> str:
    """The SeriesInstanceUID of one DICOM file (``""`` if it has none)."""
    path = Path(path)
    return _meta(_file_reader(path, path.parent), _SERIES_UID)


def series_uid_of_folder(folder: str | Path) -> str:
    """The SeriesInstanceUID of the first DICOM image file in ``folder`` by name that is no RT dose grid (one
    header read; ``""`` if none has one): which series a series folder holds."""
    first = _first_scan_header(Path(folder))
    return _meta(first, _SERIES_UID) if first is not None else ""


def series_modality(folder: str | Path) -> str:
    """The Modality (0008,0060) of the scan in ``folder`` that :func:`load_dicom` reads by default, from one header
    where it can (``""`` if none has one): the first DICOM image file by name that is no RT dose grid, or, where
    SEG / RTSTRUCT files among the files name the series they were drawn on, the first file of that series.

    Discovery asks every case this, so it reads as few headers as it can; SEG / RTSTRUCT files are passed over
    (their Modality is SEG / RTSTRUCT, not the scan's).
    """
    folder = Path(folder)
    labels = [p for p in _dicom_files(folder) if is_dicom_label_file(p)]
    drawn_on: set[str] = set().union(*(referenced_series_uids(p) for p in labels))
    first = _first_scan_header(folder, drawn_on)
    return _meta(first, _MODALITY) if first is not None else ""


def _first_scan_header(folder: Path, series_uids: Collection[str] = ()) -> sitk.ImageFileReader | None:
    """The header of the first DICOM image file in ``folder`` by name, an RT dose grid (or another object of
    :data:`~medseg.io.scans.NOT_SCAN_MODALITIES`) only where nothing else is (a planning system exports the dose
    beside the CT it was planned on; the CT is the scan); with ``series_uids``
    the first of those series where there is one. ``None`` when no file is an image GDCM reads. SEG / RTSTRUCT
    files are passed over."""
    first_scan = first_not_scan = None
    for path in _dicom_files(folder):
        if is_dicom_label_file(path):
            continue
        try:
            reader = _file_reader(path, folder)
        except UnreadableScanError:
            continue  # not an image GDCM reads (a report, a plan, a corrupt file): the next one may be
        if series_uids and _meta(reader, _SERIES_UID) in series_uids:
            return reader
        if _meta(reader, _MODALITY).upper() in NOT_SCAN_MODALITIES:
            first_not_scan = first_not_scan or reader
        elif not series_uids:
            return reader
        else:
            first_scan = first_scan or reader
    return first_scan or first_not_scan


def folder_voxels(folder: str | Path) -> int | None:
    """Values a DICOM series folder holds, from one header: its DICOM files x one image file's voxels.

    One header is read (a whole-body CT of 500 slices must not cost 500 header reads before a run starts); every
    other file is only checked for the ``DICM`` marker (132 bytes). A folder that also holds other series or a
    SEG / RTSTRUCT file counts them as slices too: an estimate on the safe side.

    Returns:
        The count, or ``None`` when the folder holds no DICOM file whose header GDCM reads as an image.
    """
    folder = Path(folder)
    reader = _first_scan_header(folder)
    if reader is None:
        return None
    return len(list(_dicom_files(folder))) * int(np.prod(reader.GetSize())) * int(reader.GetNumberOfComponents())


def _dicom_files(folder: Path) -> Iterator[Path]:
    """The DICOM Part-10 files directly in ``folder``, by name (a DICOMDIR index left out), found lazily."""
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.name.upper() != "DICOMDIR"):
        if is_dicom_file(path):
            yield path


def _read_slice(path: Path, folder: Path) -> _Slice:
    reader = _file_reader(path, folder)
    size = reader.GetSize()
    if len(size) == 2:
        size = (*size, 1)
    spacing = np.array(reader.GetSpacing(), dtype=np.float64)
    direction = np.array(reader.GetDirection(), dtype=np.float64).reshape(len(spacing), len(spacing))
    if len(spacing) == 2:
        spacing, direction = np.append(spacing, 1.0), np.pad(direction, ((0, 1), (0, 1)))
        direction[2, 2] = 1.0
    return _Slice(
        path=path,
        uid=_meta(reader, _SERIES_UID),
        description=_meta(reader, _SERIES_DESCRIPTION),
        position=np.array(reader.GetOrigin()[:3], dtype=np.float64),
        direction=direction,
        spacing=spacing,
        size=(int(size[0]), int(size[1]), int(size[2])),
        has_position=reader.HasMetaDataKey(_POSITION) and reader.HasMetaDataKey(_ORIENTATION),
        rescale=(_meta(reader, _SLOPE), _meta(reader, _INTERCEPT)),
        image_type=_meta(reader, _IMAGE_TYPE),
        modality=_meta(reader, _MODALITY),
    )


def _scan_folder(folder: Path) -> tuple[dict[str, list[_Slice]], list[str], list[Path]]:
    """Reads the header of every DICOM image file directly in ``folder`` once, grouped by SeriesInstanceUID.

    Files GDCM cannot read as an image (a DICOMDIR, a structured report, a corrupt file) are skipped, as
    SimpleITK's own series scanner skips them, and returned by name so errors can mention them; if nothing
    readable is left, the first reason is reported. SEG / RTSTRUCT files among the slices are returned too: they
    say which series they were drawn on.
    """
    if not folder.exists():
        raise UnreadableScanError(folder, "no such folder")
    if not folder.is_dir():
        raise UnreadableScanError(folder, "not a folder (a DICOM series is read from its folder)")
    groups: dict[str, list[_Slice]] = {}
    skipped: list[str] = []
    first_error: UnreadableScanError | None = None
    labels: list[Path] = []
    for path in _dicom_files(folder):
        if is_dicom_label_file(path):  # SEG / RTSTRUCT: labels that reference a series, not slices of one
            labels.append(path)
            continue
        try:
            header = _read_slice(path, folder)
        except UnreadableScanError as exc:
            first_error = first_error or exc
            skipped.append(path.name)
            continue
        groups.setdefault(header.uid, []).append(header)
    if not groups and first_error is not None:
        raise first_error
    if not groups and labels:
        raise UnreadableScanError(
            folder,
            f"it holds only DICOM SEG / RTSTRUCT files ('{labels[0].name}'{' ...' if len(labels) > 1 else ''}), labels "
            "that reference an image series; read them with medseg.io.load_segmentation(path, reference=...)",
        )
    return groups, skipped, labels


def _info(slices: list[_Slice]) -> DicomSeriesInfo:
    normal = np.cross(slices[0].direction[:, 0], slices[0].direction[:, 1])
    ordered = sorted(slices, key=lambda s: (float(s.position @ normal), s.path.name))
    return DicomSeriesInfo(
        uid=slices[0].uid,
        description=slices[0].description,
        n_slices=len(slices),
        files=tuple(s.path for s in ordered),
        modality=slices[0].modality,
    )


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """Lists the DICOM series directly inside ``folder`` (not in its subfolders).

    Args:
        folder: A folder of DICOM files.

    Returns:
        One entry per SeriesInstanceUID (sorted by UID), files in position order; empty if the folder holds no
        DICOM Part-10 files (``DICM`` marker or ``.dcm`` name).

    Raises:
        UnreadableScanError: ``folder`` does not exist or is not a folder, or none of its DICOM files is readable.
    """
    groups, _, _ = _scan_folder(Path(folder))
    return [_info(groups[uid]) for uid in sorted(groups)]


def _choose_series(
    infos: list[DicomSeriesInfo],
    series: str | None,
    folder: Path,
    default_series: str | None = None,
    referenced: Collection[str] = (),
) -> DicomSeriesInfo:
    """The series ``series`` (else ``default_series``) names; without either, the only one, the one the folder's
    SEG / RTSTRUCT files were drawn on (``referenced``: their referenced SeriesInstanceUIDs, when that is exactly
    one of the folder's), or the only one that is no RT dose grid. Anything else is refused."""
    listing = "\n  ".join(str(info) for info in infos[:_MAX_LISTED])
    if len(infos) > _MAX_LISTED:
        listing += f"\n  ... and {len(infos) - _MAX_LISTED} more (see medseg.io.list_dicom_series)"
    if series is None and len(infos) == 1:
        return infos[0]
    if series is None:
        series = default_series  # the configured series (data.series) only decides between several
    drawn_on = [i for i in infos if i.uid in referenced]
    if series is None and len(drawn_on) == 1:
        # A planning export with several scans (CT and a registered MR or PET): the structure set names its own.
        log.info("'%s': reading series %s, which its SEG / RTSTRUCT was drawn on", folder, drawn_on[0].uid)
        return drawn_on[0]
    scans = [i for i in infos if i.modality.upper() not in NOT_SCAN_MODALITIES]
    if series is None and len(scans) == 1:
        # A planning export: the CT, and the dose grids computed on it (their Modality says so: not guessed).
        log.info("'%s': reading series %s; the RT dose grid(s) beside it are no scan", folder, scans[0].uid)
        return scans[0]
    if series is None:
        raise MultipleSeriesError(
            folder,
            f"it holds {len(infos)} DICOM series; choose one (its SeriesInstanceUID, a unique description or a "
            f"unique UID prefix) with {SERIES_HINT}:\n  {listing}",
        )
    wanted = series.strip()
    for matches in (
        [i for i in infos if i.uid == wanted],
        [i for i in infos if i.description.casefold() == wanted.casefold()],
        [i for i in infos if wanted and i.uid.startswith(wanted)],
    ):
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            break
    raise UnreadableScanError(
        folder, f"series={series!r} does not pick exactly one of its {len(infos)} series:\n  {listing}"
    )


def _check_consistent(slices: list[_Slice], folder: Path) -> None:
    ref = slices[0]
    for s in slices[1:]:
        if s.size != ref.size:
            raise UnreadableScanError(
                folder,
                f"slices differ in size: '{ref.path.name}' is {ref.size[1]}x{ref.size[0]} (rows x columns), "
                f"'{s.path.name}' is {s.size[1]}x{s.size[0]}",
            )
        if not np.allclose(s.direction[:, :2], ref.direction[:, :2], atol=_ORIENTATION_ATOL):
            raise UnreadableScanError(
                folder,
                f"slices have different orientations (ImageOrientationPatient of '{ref.path.name}' and "
                f"'{s.path.name}' differ): the series mixes stacks, e.g. a localizer; separate them",
            )
        if not np.allclose(s.spacing[:2], ref.spacing[:2], rtol=_ORIENTATION_ATOL, atol=0):
            raise UnreadableScanError(
                folder, f"slices have different pixel spacings ('{ref.path.name}' and '{s.path.name}')"
            )
    if any(s.size[2] > 1 for s in slices):
        raise UnreadableScanError(folder, "the series mixes multi-frame files with other files; medseg cannot stack it")
    missing = [s.path.name for s in slices if not s.has_position]
    if missing:
        raise UnreadableScanError(
            folder,
            f"{len(missing)} slice(s) have no ImagePositionPatient/ImageOrientationPatient (e.g. '{missing[0]}'), "
            "so they cannot be placed in space",
        )


def _order_slices(slices: list[_Slice], folder: Path) -> tuple[list[_Slice], float]:
    """Sorts slices along the slice normal and checks they form a regular stack.

    Returns:
        The slices in ascending position along ``normal = row direction x column direction`` and the slice
        spacing in mm (first-to-last distance / (n - 1)).

    Raises:
        UnreadableScanError: Duplicate positions, a missing slice, uneven spacing, or a sheared (tilted) stack.
    """
    ref = slices[0]
    normal = np.cross(ref.direction[:, 0], ref.direction[:, 1])
    normal /= np.linalg.norm(normal)
    along = np.array([s.position @ normal for s in slices])
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    along = along[order]
    gaps = np.diff(along)

    def between(i: int) -> str:
        return (
            f"between '{slices[i].path.name}' ({along[i]:.2f} mm along the slice normal) and "
            f"'{slices[i + 1].path.name}' ({along[i + 1]:.2f} mm), slices {i + 1} and {i + 2} of {len(slices)} "
            "in position order"
        )

    dup = np.flatnonzero(gaps < _DUPLICATE_MM)
    if dup.size:
        raise UnreadableScanError(
            folder,
            f"{dup.size} pair(s) of slices share a position, e.g. {between(int(dup[0]))}: the series holds "
            "several acquisitions, echoes or time points; separate them into one folder each",
        )
    median = float(np.median(gaps))
    tol = _SPACING_RTOL * median + 1e-3
    off = np.flatnonzero(np.abs(gaps - median) > tol)
    if off.size:
        worst = int(off[np.argmax(gaps[off])])
        ratio = gaps[worst] / median
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            raise UnreadableScanError(
                folder,
                f"missing slice(s): a gap of {gaps[worst]:.3f} mm ({ratio:.1f}x the {median:.3f} mm slice "
                f"spacing) {between(worst)}; about {round(ratio) - 1} slice(s) are missing",
            )
        raise UnreadableScanError(
            folder,
            f"slice spacing is not uniform: gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (median "
            f"{median:.3f} mm), e.g. {gaps[worst]:.3f} mm {between(worst)}",
        )
    offsets = np.array([s.position for s in slices]) - slices[0].position
    in_plane = offsets - np.outer(along - along[0], normal)
    drift = float(np.linalg.norm(in_plane, axis=1).max())
    if drift > _SHEAR_PIXELS * float(ref.spacing[:2].min()) + 1e-3:
        raise UnreadableScanError(
            folder,
            f"slice positions drift {drift:.2f} mm sideways from the slice normal (gantry tilt or a sheared "
            "stack), which a voxel grid cannot represent; resample the series (e.g. with dcm2niix) first",
        )
    return slices, float((along[-1] - along[0]) / (len(slices) - 1))


def _no_dicom_reason(folder: Path) -> str:
    try:
        below = [p for p in find_scans(folder) if p != folder]
    except OSError:
        below = []
    if below:
        shown = ", ".join(f"'{p.relative_to(folder)}'" for p in below[:5])
        more = f" and {len(below) - 5} more" if len(below) > 5 else ""
        return f"no DICOM files directly in it, but it contains scans: {shown}{more}; pass one of those"
    return "no DICOM files in it"


def load_dicom(folder: str | Path, *, series: str | None = None, default_series: str | None = None) -> Volume:
    """Reads one DICOM series from a folder into a Volume (``(I, J, K)`` = columns, rows, slices; RAS affine).

    Args:
        folder: Folder holding the series' files (not searched recursively).
        series: Which series, when the folder holds several: SeriesInstanceUID, a unique SeriesDescription
            (case-insensitive) or a unique UID prefix.
        default_series: The configured series (``data.series``), used only when the folder holds several.

    Returns:
        The volume, slices in ascending order along the slice normal; ``source`` is the folder, ``header`` None.

    Raises:
        UnreadableScanError: No DICOM files, an irregular stack (missing slice, uneven spacing, tilt), corrupt files.
        MultipleSeriesError: Several series and ``series`` not given.
        MissingDecoderError: Compressed pixel data no installed decoder can read.
    """
    folder = Path(folder)
    groups, skipped, labels = _scan_folder(folder)
    if not groups:
        raise UnreadableScanError(folder, _no_dicom_reason(folder))
    infos = [_info(groups[uid]) for uid in sorted(groups)]
    referenced: set[str] = set()
    if series is None and default_series is None and len(infos) > 1:
        referenced = set().union(*(referenced_series_uids(p) for p in labels))
    info = _choose_series(infos, series, folder, default_series, referenced)
    slices = groups[info.uid]
    if len(slices) == 1 and slices[0].needs_own_reader:
        return _load_single_file(slices[0], folder)
    own = [s for s in slices if s.needs_own_reader]
    if own:
        kinds = sorted(
            {
                "Siemens mosaic"
                if "MOSAIC" in s.image_type.upper()
                else "RT dose"
                if s.modality.upper() == "RTDOSE"
                else "multi-frame"
                for s in own
            }
        )
        raise MultipleVolumesError(
            folder,
            f"the series has {len(slices)} files of which {len(own)} are {' / '.join(kinds)} files, each "
            f"holding a volume of its own (e.g. '{own[0].path.name}'); medseg reads one 3D volume: {SPLIT_HINT}",
        )
    try:
        _check_consistent(slices, folder)
        if len(slices) > 1:
            slices, slice_spacing = _order_slices(slices, folder)
        else:
            slice_spacing = float(slices[0].spacing[2])
    except UnreadableScanError as exc:
        if not skipped:
            raise
        names = ", ".join(f"'{n}'" for n in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise UnreadableScanError(folder, f"{exc.reason} ({len(skipped)} unreadable file(s) skipped: {names})") from exc
    array = read_pixels([s.path for s in slices], folder, rescale_varies=len({s.rescale for s in slices}) > 1)
    ref = slices[0]
    expected = (ref.size[0], ref.size[1], len(slices))
    if array.shape != expected:
        raise UnreadableScanError(folder, f"decoded voxels have shape {array.shape}, expected {expected}")
    direction = np.column_stack([ref.direction[:, 0], ref.direction[:, 1], np.cross(*ref.direction[:, :2].T)])
    spacing = np.array([ref.spacing[0], ref.spacing[1], slice_spacing])
    affine = affine_from_itk(spacing, ref.position, direction)
    return Volume(array=array, affine=affine, source=folder)


def _load_single_file(header: _Slice, folder: Path) -> Volume:
    """A series of one multi-frame, RT dose or mosaic file: its frames get the checks a series' files get."""
    path = header.path
    ds = dicom_frames.read_dataset(path, folder)
    if dicom_frames.is_mosaic(ds):
        return dicom_frames.load_mosaic(ds, path, folder)
    geometries = dicom_frames.frame_geometries(ds, path, folder)
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = [
        _Slice(
            path=Path(f"{path.name}, frame {g.index + 1}"),  # names the frame in the checks' messages
            uid=header.uid,
            description=header.description,
            position=g.position,
            direction=np.column_stack(
                [g.row_direction, g.column_direction, np.cross(g.row_direction, g.column_direction)]
            ),
            spacing=np.array([g.pixel_spacing[1], g.pixel_spacing[0], header.spacing[2]]),
            size=(cols, rows, 1),
            has_position=True,
            rescale=("", ""),
        )
        for g in geometries
    ]
    _check_consistent(frames, folder)
    normal = frames[0].direction[:, 2]
    dicom_frames.check_one_volume(np.array([f.position @ normal for f in frames]), len(frames), path, folder)
    index = {f.path.name: g.index for f, g in zip(frames, geometries, strict=True)}
    if len(frames) > 1:
        frames, slice_spacing = _order_slices(frames, folder)
    else:
        slice_spacing = float(header.spacing[2])
    pixels = dicom_frames.frame_pixels(ds, geometries, path, folder)
    array = np.ascontiguousarray(pixels[[index[f.path.name] for f in frames]].transpose(2, 1, 0))
    if str(ds.get("Modality", "")).upper() == "RTDOSE":
        dicom_frames.describe_dose(ds, path)
    ref = frames[0]
    spacing = np.array([ref.spacing[0], ref.spacing[1], slice_spacing])
    return Volume(array=array, affine=affine_from_itk(spacing, ref.position, ref.direction), source=folder)
