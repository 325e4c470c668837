"""RT Structure Sets (RTSTRUCT): masks as closed planar contours on the source series, and back to masks.

Library choice (checked with pydicom 3.0.2): highdicom has no RTSTRUCT writer; ``rt-utils`` 1.2.7 writes with
pydicom 3 but traces contours through pixel centres with OpenCV and, for holes, either cuts a 1-pixel
"pin hole" channel into the mask (losing those pixels) or writes inner contours that its own reader fills in.
So contours come from scikit-image and the dataset is built with pydicom here:

* **Contours**: per source slice and class, :func:`skimage.measure.find_contours` at level 0.5 on the slice
  (padded by one pixel, so every contour is closed): the iso-line runs half way between foreground and
  background pixel centres. Each contour is one ``CLOSED_PLANAR`` item in patient (LPS) coordinates, with the
  slice's SOP instance in its ContourImageSequence. A hole gives its own (inner) contour.
* **Holes / rasterising**: contours of one ROI on one slice are combined with the even-odd rule (XOR of the
  filled polygons, pixel centres inside a polygon), the convention of the common RT readers; this turns inner
  contours into holes and islands in holes into islands again, and reproduces the mask exactly except where two
  pixels touch only at a corner.
* **Dataset**: RT Structure Set IOD modules Patient / General Study (copied from the source), RT Series,
  General Equipment, Structure Set (ReferencedFrameOfReferenceSequence down to every ContourImageSequence
  instance), ROI Contour, RT ROI Observations (with the class code as RTROIIdentificationCodeSequence) and SOP
  Common.

Reading rasterises each contour onto the image series' grid; a contour off every slice plane, or outside the
slice's pixel area, is a :class:`~medseg.errors.ContourOutsideImageError`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import UID, ImplicitVRLittleEndian, generate_uid

from medseg.errors import ContourOutsideImageError, ForeignReferenceError, GeometryMismatchError, MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.dicom_seg import SEGMENT_COLOURS as _COLOURS
from medseg.io.dicom_seg import DicomWriteOptions, _version, fit_lo
from medseg.io.dicom_source import RTSTRUCT_SOP_CLASS, SourceSeries, source_series
from medseg.io.structure_masks import combine_masks, segment_classes
from medseg.volume import Volume

__all__ = ["load_rtstruct", "save_rtstruct"]

_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)
#: A contour point may lie this far (in slice spacings) off the plane of its slice.
_PLANE_TOLERANCE = 0.25
#: ... and this far (pixels) outside the slice's pixel area (the 0.5 iso-line of an edge pixel lies at -0.5).
_EDGE_TOLERANCE_PX = 0.5 + 1e-3


def _slice_contours(frame: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``(N, 2)`` as (column, row) pixel coordinates around the foreground of one slice."""
    from skimage.measure import find_contours

    padded = np.pad(frame.astype(np.float32), 1)
    contours = find_contours(padded, 0.5)
    # find_contours gives (row, col) in padded coordinates, first point repeated at the end for closed ones.
    return [c[:-1, ::-1] - 1.0 for c in contours if len(c) > 3]


def _item(**kwargs: object) -> Dataset:
    ds = Dataset()
    for key, value in kwargs.items():
        setattr(ds, key, value)
    return ds


def _code_item(code: str, scheme: str, meaning: str) -> Dataset:
    return _item(CodeValue=code, CodingSchemeDesignator=scheme, CodeMeaning=meaning)


def save_rtstruct(
    mask: np.ndarray,
    like: Volume,
    path: str | Path,
    classes: Sequence[str],
    *,
    options: DicomWriteOptions | None = None,
    overwrite: bool = False,
    segments: np.ndarray | None = None,
) -> Path:
    """Writes an RTSTRUCT with one ROI per foreground class, contoured on the series ``like`` was read from.

    Args:
        mask: Integer labels ``0..len(classes)-1`` on ``like``'s grid.
        like: The scan, read from a DICOM series folder.
        path: Output file (``.dcm``), written atomically.
        classes: Class names, background first (ROI names).
        options: Codes and header fields (:class:`~medseg.io.dicom_seg.DicomWriteOptions`; ``fractional`` and
            ``omit_empty_frames`` do not apply).
        overwrite: Replace an existing file.
        segments: ``(len(classes) - 1, I, J, K)`` boolean masks, one per ROI, contoured instead of ``mask``'s
            labels: ROIs that overlap (a region model's regions: the whole tumour holds the core).

    Returns:
        The path written.

    Raises:
        ForeignReferenceError: ``like`` was not read from a DICOM series.
        GeometryMismatchError: ``mask`` is not on ``like``'s grid.
    """
    options = options or DicomWriteOptions()
    if segments is not None and np.shape(segments) != (len(classes) - 1, *like.shape):
        raise MedsegError(
            f"Cannot write RTSTRUCT '{path}': segments of shape {np.shape(segments)}, expected "
            f"{(len(classes) - 1, *like.shape)}"
        )
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise GeometryMismatchError(
            f"Cannot write RTSTRUCT '{path}': mask shape {mask.shape} != scan shape {like.shape}"
        )
    if mask.size and (mask.min() < 0 or mask.max() >= len(classes)):
        raise MedsegError(f"Cannot write RTSTRUCT '{path}': labels outside 0..{len(classes) - 1}")
    src = source_series(like)
    first = src.datasets[0]
    now = _dt.datetime.now()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(RTSTRUCT_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    # Implicit VR: its 4-byte value lengths hold long contours; explicit VR gives DS (ContourData) 2 bytes, so a
    # contour of more than ~3,500 points (a 64 KiB string) cannot be written in it.
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    for key in _PATIENT_STUDY:
        setattr(ds, key, first.get(key, ""))
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = options.series_number
    ds.SeriesDescription = fit_lo(options.series_description)
    ds.InstanceNumber = 1
    ds.Manufacturer = fit_lo(options.manufacturer)
    ds.ManufacturerModelName = "medseg"
    ds.SoftwareVersions = _version(options)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = ds.StructureSetDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = ds.StructureSetTime = now.strftime("%H%M%S")
    ds.StructureSetLabel = options.series_description[:16] or "medseg"
    ds.ReferencedFrameOfReferenceSequence = DicomSequence(
        [
            _item(
                FrameOfReferenceUID=src.frame_of_reference_uid,
                RTReferencedStudySequence=DicomSequence(
                    [
                        _item(
                            ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1",  # Detached Study Management (RT usage)
                            ReferencedSOPInstanceUID=first.StudyInstanceUID,
                            RTReferencedSeriesSequence=DicomSequence(
                                [
                                    _item(
                                        SeriesInstanceUID=src.series_uid,
                                        ContourImageSequence=DicomSequence(
                                            [_image_reference(src, n) for n in range(len(src.datasets))]
                                        ),
                                    )
                                ]
                            ),
                        )
                    ]
                ),
            )
        ]
    )
    rois, contours_seq, observations = [], [], []
    description = f"medseg {_version(options)}" + (f" ({options.algorithm_source})" if options.algorithm_source else "")
    for number, name in enumerate(classes[1:], start=1):
        code = options.code_for(name)
        rois.append(
            _item(
                ROINumber=number,
                ReferencedFrameOfReferenceUID=src.frame_of_reference_uid,
                ROIName=name,
                ROIGenerationAlgorithm="AUTOMATIC",
                ROIGenerationDescription=fit_lo(description),
            )
        )
        items = []
        binary = mask == number if segments is None else np.asarray(segments[number - 1], dtype=bool)
        for n in range(len(src.datasets)):
            to_lps = src.matrices[n]
            for c in _slice_contours(src.frame(binary, n)):
                points = (to_lps @ np.c_[c, np.zeros(len(c)), np.ones(len(c))].T)[:3].T
                items.append(
                    _item(
                        ContourImageSequence=DicomSequence([_image_reference(src, n)]),
                        ContourGeometricType="CLOSED_PLANAR",
                        NumberOfContourPoints=len(points),
                        ContourData=[f"{v:.4f}" for v in points.ravel()],
                    )
                )
        roi_contour = _item(ReferencedROINumber=number, ROIDisplayColor=list(_COLOURS[(number - 1) % len(_COLOURS)]))
        if items:  # ContourSequence is Type 3: an ROI without any voxel has none.
            roi_contour.ContourSequence = DicomSequence(items)
        contours_seq.append(roi_contour)
        observations.append(
            _item(
                ObservationNumber=number,
                ReferencedROINumber=number,
                RTROIInterpretedType="",
                ROIInterpreter="",
                RTROIIdentificationCodeSequence=DicomSequence([_code_item(code.code, code.scheme, code.meaning)]),
            )
        )
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours_seq)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    with atomic_path(path, overwrite=overwrite) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def _image_reference(src: SourceSeries, n: int) -> Dataset:
    """A ContourImageSequence item naming plane ``n``: its instance, and its frame in a multi-frame one."""
    d = src.datasets[n]
    item = _item(ReferencedSOPClassUID=d.SOPClassUID, ReferencedSOPInstanceUID=d.SOPInstanceUID)
    number = src.frame_numbers[n]
    if number is not None:
        item.ReferencedFrameNumber = number
    return item


def _slice_of_contour(
    points: np.ndarray, item: Dataset, src: SourceSeries, path: Path, what: str
) -> tuple[int, np.ndarray]:
    """The source plane a contour lies on, and its points as (column, row) pixel coordinates there."""
    uids = src.sop_uids
    candidates: Sequence[int] = range(len(uids))
    ref = item.get("ContourImageSequence")
    if ref:
        uid = str(ref[0].ReferencedSOPInstanceUID)
        number = ref[0].get("ReferencedFrameNumber") if src.multi_frame else None
        if src.multi_frame and uid == uids[0]:
            if number in (None, ""):
                # The multi-frame image without a frame number: the frame that the contour's points lie on (the
                # geometry decides, as without any reference).
                candidates = range(len(uids))
            else:
                plane = src.plane_index(uid, int(number))
                if plane is None:
                    raise ForeignReferenceError(
                        f"RTSTRUCT '{path}': {what} references frame {number} of instance {uid}, which the image "
                        f"does not have ({len(uids)} frames)"
                    )
                candidates = [plane]
        else:
            plane = None if src.multi_frame else src.plane_index(uid, None)
            if plane is None:
                raise ForeignReferenceError(
                    f"RTSTRUCT '{path}': {what} references instance {uid}, which is not in the image series"
                )
            candidates = [plane]
    spacing = 1.0
    if len(src.datasets) > 1:
        spacing = float(np.linalg.norm(src.matrices[1][:3, 3] - src.matrices[0][:3, 3]))
    best: tuple[float, int, np.ndarray] | None = None
    for n in candidates:
        local = (np.linalg.inv(src.matrices[n]) @ np.c_[points, np.ones(len(points))].T)[:3].T
        off = float(np.abs(local[:, 2]).max())
        if best is None or off < best[0]:
            best = (off, n, local[:, :2])
    assert best is not None
    off, n, local = best
    if off > _PLANE_TOLERANCE * spacing:
        if len(candidates) == 1 and len(uids) > 1:
            # It names its image: say which, since a wrong reference (not a contour outside the image) is as likely.
            frame = src.frame_numbers[n]
            named = f"frame {frame} of instance {uids[n]}" if frame is not None else f"instance {uids[n]}"
            raise ContourOutsideImageError(
                f"RTSTRUCT '{path}': {what} lies {off:.2f} mm off the plane of the image it references ({named}; "
                f"slice spacing {spacing:.2f} mm): a wrong reference, or a contour outside the image"
            )
        raise ContourOutsideImageError(
            f"RTSTRUCT '{path}': {what} lies {off:.2f} mm off the nearest slice plane of the image series "
            f"(slice spacing {spacing:.2f} mm): it is outside the image"
        )
    rows, cols = src.rows_columns(n)
    lo = local.min(axis=0)
    hi = local.max(axis=0)
    if lo.min() < -_EDGE_TOLERANCE_PX or hi[0] > cols - 1 + _EDGE_TOLERANCE_PX or hi[1] > rows - 1 + _EDGE_TOLERANCE_PX:
        raise ContourOutsideImageError(
            f"RTSTRUCT '{path}': {what} reaches outside the {rows}x{cols} slice it lies on (pixel columns "
            f"{lo[0]:.1f}..{hi[0]:.1f}, rows {lo[1]:.1f}..{hi[1]:.1f})"
        )
    return n, local


def load_rtstruct(
    path: str | Path,
    reference: Volume,
    classes: Sequence[str] | None = None,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    nested: bool = False,
) -> Volume:
    """Rasterises an RTSTRUCT onto the grid of its image series (even-odd rule per slice, module docs).

    Args:
        path: RTSTRUCT file.
        reference: The image, read from its DICOM series folder.
        classes: Class names (background first): ROIs map to them by name (case-insensitive). ``None``: ROI
            order = label value.
        ignore_unlisted: Leave out ROIs that are no class's (``data.unlisted_labels: background``: the body
            outline, the couch, planning volumes) instead of refusing them; their contours are not read, so a
            couch reaching beyond the image is no error.
        aliases: Other names of some classes (``data.class_aliases``), matched like the class names.
        nested: Segments may contain each other (overlapping regions, ``data.regions``): where they overlap the
            higher class index is kept, which is the painted region, without the overlap warning.

    Returns:
        Label volume on ``reference``'s grid; ``source`` is ``path``.

    Raises:
        ForeignReferenceError: Another frame of reference, or contours on instances the series does not hold.
        ContourOutsideImageError: A contour off the image's slices or outside their pixel area.
        SegmentNameError: Unknown (unless ``ignore_unlisted``) or missing ROI names.
    """
    from skimage.draw import polygon

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise MedsegError(f"Cannot read RTSTRUCT '{path}': {exc}") from exc
    src = source_series(reference)
    rois = list(ds.get("StructureSetROISequence", []))
    for roi in rois:
        frame_uid = str(roi.get("ReferencedFrameOfReferenceUID", ""))
        if frame_uid and src.frame_of_reference_uid and frame_uid != src.frame_of_reference_uid:
            raise ForeignReferenceError(
                f"RTSTRUCT '{path}' does not belong to the series of '{reference.source}': ROI '{roi.ROIName}' "
                f"has FrameOfReferenceUID {frame_uid}, the image {src.frame_of_reference_uid}"
            )
    names = [str(r.ROIName) for r in rois]
    classes_of = segment_classes(names, classes, path, "ROI(s)", ignore_unlisted=ignore_unlisted, aliases=aliases)
    class_of = dict(zip((int(r.ROINumber) for r in rois), classes_of, strict=True))
    name_of = {int(r.ROINumber): str(r.ROIName) for r in rois}
    per_class = []
    for roi_contour in ds.get("ROIContourSequence", []):
        number = int(roi_contour.ReferencedROINumber)
        if number not in class_of:
            raise MedsegError(f"RTSTRUCT '{path}': ROIContourSequence refers to ROI {number}, which is not defined")
        if class_of[number] == 0:  # no class's (data.unlisted_labels: background)
            continue
        frames: dict[int, np.ndarray] = {}
        for m, item in enumerate(roi_contour.get("ContourSequence", []), start=1):
            if str(item.get("ContourGeometricType", "CLOSED_PLANAR")) == "POINT":
                continue
            points = np.asarray(item.ContourData, dtype=np.float64).reshape(-1, 3)
            what = f"contour {m} of ROI '{name_of[number]}'"
            n, local = _slice_of_contour(points, item, src, path, what)
            shape = src.rows_columns(n)
            frame = frames.setdefault(n, np.zeros(shape, dtype=bool))
            # pixel centres inside the polygon (computed in its bounding box), XOR-ed in: the even-odd rule
            rr, cc = polygon(local[:, 1], local[:, 0], shape)
            frame[rr, cc] ^= True
        volume = np.zeros(reference.shape, dtype=bool)
        for n, frame in frames.items():
            src.put(volume, n, frame)
        per_class.append((class_of[number], volume))
    label_map = combine_masks(per_class, reference.shape, path, "ROI", nested)
    return Volume(array=label_map, affine=reference.affine, source=path)
