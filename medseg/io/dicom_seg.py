"""DICOM Segmentation objects (SEG): written with highdicom on the source series, read back onto its grid.

Writing (:func:`save_dicom_seg`): one highdicom ``Segmentation`` per series, one segment per foreground class
(label = class name, category / type codes per class, algorithm identification = medseg, its version and the
checkpoint), BINARY from the label map or FRACTIONAL from the class probabilities. The SEG references the
source study, series, SOP instances and FrameOfReferenceUID, and holds one frame per source slice and segment,
mapped to its slice through :mod:`medseg.io.dicom_source` by geometry (whatever medseg's internal axis order) and
referencing it by SOP Instance UID. The order of the frames in the file is highdicom's, not the source's file
order: highdicom sorts the planes of a Segmentation by position along its slice normal (descending along
the row x column normal) whatever order they are given in. Readers that follow the standard (dcmqi / Slicer,
highdicom, OHIF) place frames by position and referenced instance, never by order, so this costs nothing there.

Empty frames are **kept by default** (``omit_empty_frames=False``): every source slice then has a frame in every
segment, which readers that pair frames with slices by order or expect a complete stack (older Cornerstone /
OHIF loaders) display correctly, while Slicer (dcmqi) and highdicom read both forms. The cost is size only: a
BINARY frame is 1 bit per pixel (a 320 x 280 x 22 series: ~250 kB per segment).

Reading (:func:`load_dicom_seg`): frames are mapped to the reference series by ReferencedSOPInstanceUID (never by
order alone); a SEG of another series or frame of reference, or whose frames reference instances the series does
not hold, is a :class:`~medseg.errors.ForeignReferenceError`; segments map to classes by label.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from medseg.errors import ForeignReferenceError, GeometryMismatchError, MedsegError
from medseg.io.atomic import atomic_path
from medseg.io.dicom_source import SourceSeries, source_series
from medseg.io.structure_masks import combine_masks, segment_classes
from medseg.volume import Volume

log = logging.getLogger(__name__)

__all__ = ["GENERIC_CODE", "ClassCode", "DicomWriteOptions", "load_dicom_seg", "save_dicom_seg", "segment_classes"]


@dataclass(frozen=True)
class ClassCode:
    """Coded meaning of one class (DICOM segmented property type and category), e.g. SNOMED CT.

    Attributes:
        code, scheme, meaning: Segmented property type, e.g. ``("108369006", "SCT", "Neoplasm")``.
        category_code, category_scheme, category_meaning: Segmented property category; default "Tissue".
    """

    code: str
    scheme: str
    meaning: str
    category_code: str = "85756007"
    category_scheme: str = "SCT"
    category_meaning: str = "Tissue"


#: Used (with a warning) for a class without a configured code: SNOMED CT "Tissue" / "Tissue", the generic entry
#: 3D Slicer's terminology also falls back to.
GENERIC_CODE = ClassCode("85756007", "SCT", "Tissue")


_WARNED: set[str] = set()


@dataclass(frozen=True)
class DicomWriteOptions:
    """How medseg's DICOM outputs (SEG, RTSTRUCT) are described.

    Attributes:
        class_codes: Coded meaning per class name; classes without one get :data:`GENERIC_CODE` and a warning.
        series_description, series_number, manufacturer: Header fields of the new series.
        omit_empty_frames: SEG only: leave out frames without any foreground (default keeps them; module docs).
        fractional: SEG only: write FRACTIONAL (probability) segments instead of BINARY ones.
        algorithm_version: Version of the producing software (medseg's).
        algorithm_source: Run or checkpoint that produced the mask (recorded as the algorithm's source).
    """

    class_codes: dict[str, ClassCode] = field(default_factory=dict)
    series_description: str = "medseg segmentation"
    series_number: int = 901
    manufacturer: str = "medseg"
    omit_empty_frames: bool = False
    fractional: bool = False
    algorithm_version: str = ""
    algorithm_source: str = ""

    def code_for(self, name: str) -> ClassCode:
        code = self.class_codes.get(name)
        if code is None and name not in _WARNED:
            _WARNED.add(name)  # once per class and process, not once per scan of a batch
            log.warning(
                "Class '%s' has no coded meaning in data.class_codes; its DICOM segment/ROI is coded as the "
                "generic SCT 85756007 'Tissue'",
                name,
            )
        return GENERIC_CODE if code is None else code


#: Longest value of a DICOM LO (Long String) element, e.g. SeriesDescription, Manufacturer, AlgorithmSource.
LO_MAX = 64


def fit_lo(text: str) -> str:
    """``text`` cut to a valid LO value (64 characters), keeping its end (a file name) after a leading ``...``."""
    return text if len(text) <= LO_MAX else "..." + text[-(LO_MAX - 3) :]


def _version(options: DicomWriteOptions) -> str:
    if options.algorithm_version:
        return options.algorithm_version
    from medseg import __version__

    return __version__


#: Display colours of segments 1, 2, ... (RGB; viewers such as Slicer take RecommendedDisplayCIELabValue).
SEGMENT_COLOURS = ((255, 0, 0), (0, 200, 0), (0, 0, 255), (255, 200, 0), (200, 0, 255), (0, 200, 255))

#: Type 2 Patient / General Study attributes a SEG copies from its source; some exports (e.g. the HippoCrop
#: series) leave them out, and highdicom needs them present (empty is valid for Type 2).
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def _with_type2(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Copies of the source headers with absent Type 2 patient / study attributes added empty."""
    out = []
    for ds in datasets:
        missing = [key for key in _TYPE2_COPIED if key not in ds]
        if missing:
            ds = copy.deepcopy(ds)
            for key in missing:
                setattr(ds, key, "")
        out.append(ds)
    return out


#: Largest difference between two frames' ImageOrientationPatient values still taken as one orientation.
_SAME_ORIENTATION = 1e-4


def _shared_orientation(ds: Dataset, path: Path) -> Dataset:
    """A multi-frame source header with its orientation in the shared functional group, as highdicom requires.

    Some enhanced exports repeat PlaneOrientationSequence in every per-frame group instead; when all frames agree
    it is moved (in a copy) to the shared group. The source file is not touched.

    Raises:
        MedsegError: The frames have different orientations (a SEG over them cannot be written).
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not per_frame or (shared and "PlaneOrientationSequence" in shared[0]):
        return ds
    if not all("PlaneOrientationSequence" in frame for frame in per_frame):
        return ds  # highdicom names what is missing
    values = np.array(
        [[float(v) for v in frame.PlaneOrientationSequence[0].ImageOrientationPatient] for frame in per_frame]
    )
    if np.abs(values - values[0]).max() > _SAME_ORIENTATION:
        raise MedsegError(
            f"Cannot write SEG '{path}': the frames of the multi-frame source {ds.SOPInstanceUID} lie in different "
            "orientations"
        )
    ds = copy.deepcopy(ds)
    if not shared:
        ds.SharedFunctionalGroupsSequence = [Dataset()]
    ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence = copy.deepcopy(per_frame[0].PlaneOrientationSequence)
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.PlaneOrientationSequence
    return ds


def _frames(array: np.ndarray, src: SourceSeries) -> np.ndarray:
    return np.stack([src.frame(array, n) for n in src.writing_order()])


def save_dicom_seg(
    mask: np.ndarray,
    like: Volume,
    path: str | Path,
    classes: Sequence[str],
    *,
    probabilities: np.ndarray | None = None,
    options: DicomWriteOptions | None = None,
    overwrite: bool = False,
    segments: np.ndarray | None = None,
) -> Path:
    """Writes a DICOM SEG of ``mask`` that references the series ``like`` was read from.

    Args:
        mask: Integer labels ``0..len(classes)-1`` on ``like``'s grid.
        like: The scan, read from a DICOM series folder.
        path: Output file (``.dcm``), written atomically.
        classes: Class names, background first; one segment per foreground class.
        probabilities: ``(C, I, J, K)`` class probabilities on ``like``'s grid; required when
            ``options.fractional``.
        segments: ``(len(classes) - 1, I, J, K)`` boolean masks, one per segment, written as BINARY segments
            instead of ``mask``'s labels: segments that overlap (a region model's regions: the whole tumour holds
            the core), which a SEG allows and a label map cannot hold.
        options: Codes and header fields; defaults documented on :class:`DicomWriteOptions`.
        overwrite: Replace an existing file.

    Returns:
        The path written.

    Raises:
        ForeignReferenceError: ``like`` was not read from a DICOM series (e.g. a NIfTI scan).
        GeometryMismatchError: ``mask`` is not on ``like``'s grid.
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    options = options or DicomWriteOptions()
    path = Path(path)
    mask = np.asarray(mask)
    if mask.shape != like.shape:
        raise GeometryMismatchError(f"Cannot write SEG '{path}': mask shape {mask.shape} != scan shape {like.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= len(classes)):
        raise MedsegError(f"Cannot write SEG '{path}': labels outside 0..{len(classes) - 1} ({list(classes)})")
    src = source_series(like)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg",
        family=codes.cid7162.ArtificialIntelligence,
        version=_version(options),
        source=fit_lo(options.algorithm_source) or None,
    )
    descriptions = []
    for number, name in enumerate(classes[1:], start=1):
        code = options.code_for(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=hd.sr.CodedConcept(
                    code.category_code, code.category_scheme, code.category_meaning
                ),
                segmented_property_type=hd.sr.CodedConcept(code.code, code.scheme, code.meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                display_color=hd.color.CIELabColor.from_rgb(*SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)]),
            )
        )
    if options.fractional:
        if probabilities is None or probabilities.shape != (len(classes), *like.shape):
            raise MedsegError(
                f"Cannot write FRACTIONAL SEG '{path}': needs probabilities of shape {(len(classes), *like.shape)}"
            )
        pixels = np.stack([_frames(probabilities[c], src) for c in range(1, len(classes))], axis=-1)
        pixels = np.clip(pixels, 0.0, 1.0).astype(np.float32)
        seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    elif segments is not None:
        if segments.shape != (len(classes) - 1, *like.shape):
            raise MedsegError(
                f"Cannot write SEG '{path}': segments of shape {segments.shape}, expected "
                f"{(len(classes) - 1, *like.shape)}"
            )
        # One boolean plane per segment (highdicom's (frames, rows, columns, segments) form), overlaps allowed.
        pixels = np.stack([_frames(s, src) for s in np.asarray(segments, dtype=bool)], axis=-1)
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    else:
        # A label map: highdicom turns each value into the segment of that number.
        pixels = _frames(mask, src).astype(np.uint8 if len(classes) <= 256 else np.uint16)
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    with warnings.catch_warnings():
        # highdicom checks the PatientName it copies from the source; a one-part name (e.g. "PGBM-003") is the
        # source's choice, and warning about it on every scan of a batch helps nobody.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        seg = _segmentation(hd, src, pixels, seg_type, descriptions, options, path)
    with atomic_path(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp)
    return path


def _segmentation(hd, src, pixels, seg_type, descriptions, options, path):
    sources = _with_type2(src.instances)
    if src.multi_frame:
        sources = [_shared_orientation(ds, path) for ds in sources]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type=seg_type,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=options.series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=fit_lo(options.manufacturer),
        manufacturer_model_name="medseg",
        software_versions=_version(options),
        device_serial_number="0",
        series_description=fit_lo(options.series_description),
        omit_empty_frames=options.omit_empty_frames,
    )


def load_dicom_seg(
    path: str | Path,
    reference: Volume,
    classes: Sequence[str] | None = None,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    nested: bool = False,
) -> Volume:
    """Reads a DICOM SEG onto the grid of the image series it segments.

    Args:
        path: SEG file.
        reference: The image, read from its DICOM series folder (``medseg.io.load_volume``).
        classes: Class names (background first): segments map to them by label (case-insensitive). ``None``:
            segment number = label value.
        ignore_unlisted: Leave out segments that are no class's (``data.unlisted_labels: background``) instead
            of refusing them.
        aliases: Other names of some classes (``data.class_aliases``), matched like the class names.
        nested: Segments may contain each other (overlapping regions, ``data.regions``): where they overlap the
            higher class index is kept, which is the painted region, without the overlap warning.

    Returns:
        Label volume on ``reference``'s grid (FRACTIONAL segments thresholded at 0.5); ``source`` is ``path``.

    Raises:
        ForeignReferenceError: Another frame of reference or series, frames referencing instances (or frames of
            a multi-frame image) the series does not hold, frames of another size, or frames without a
            ReferencedSOPInstanceUID (and, on a multi-frame image, a ReferencedFrameNumber).
        SegmentNameError: Unknown (unless ``ignore_unlisted``) or missing segment names.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:
        raise MedsegError(f"Cannot read DICOM SEG '{path}': {exc}") from exc
    src = source_series(reference)
    where = f"DICOM SEG '{path}' does not belong to the series of '{reference.source}'"
    if src.frame_of_reference_uid and str(seg.FrameOfReferenceUID) != src.frame_of_reference_uid:
        raise ForeignReferenceError(
            f"{where}: FrameOfReferenceUID {seg.FrameOfReferenceUID} != the image's {src.frame_of_reference_uid}"
        )
    ref_series = [str(s.SeriesInstanceUID) for s in seg.get("ReferencedSeriesSequence", [])]
    if ref_series and src.series_uid not in ref_series:
        raise ForeignReferenceError(f"{where}: it references series {ref_series}, the image is {src.series_uid}")
    referenced: list[tuple[str, int | None]] = []
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        try:
            source = item.DerivationImageSequence[0].SourceImageSequence[0]
            uid = str(source.ReferencedSOPInstanceUID)
        except (AttributeError, IndexError) as exc:
            raise ForeignReferenceError(
                f"{where}: frame {n} has no ReferencedSOPInstanceUID, so it cannot be placed on a source slice"
            ) from exc
        # A frame of a multi-frame source is named by its number as well; a single-frame source's by none.
        number = source.get("ReferencedFrameNumber") if src.multi_frame else None
        if src.multi_frame and number in (None, "") and uid in src.sop_uids:  # another UID: foreign, below
            raise ForeignReferenceError(
                f"{where}: frame {n} references the multi-frame image {uid} without a ReferencedFrameNumber, so it "
                "cannot be placed on one of its frames"
            )
        referenced.append((uid, None if number in (None, "") else int(number)))
    planes = {ref: src.plane_index(*ref) for ref in set(referenced)}
    foreign = sorted((uid, frame or 0) for (uid, frame), plane in planes.items() if plane is None)
    if foreign:
        frame = f" frame {foreign[0][1]}" if src.multi_frame else ""  # frame numbers only exist there
        raise ForeignReferenceError(
            f"{where}: {len(foreign)} referenced instance(s) or frame(s) are not in the series, e.g. "
            f"{foreign[0][0]}{frame}"
        )
    rows, cols = src.rows_columns(0)
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise ForeignReferenceError(f"{where}: frames are {seg.Rows}x{seg.Columns}, the series' slices {rows}x{cols}")
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    classes_of = segment_classes(labels, classes, path, "segment(s)", ignore_unlisted=ignore_unlisted, aliases=aliases)
    kept = [(int(s.SegmentNumber), c) for s, c in zip(seg.SegmentSequence, classes_of, strict=True) if c]
    numbers, class_of = [n for n, _ in kept], [c for _, c in kept]
    present = sorted({plane for plane in planes.values() if plane is not None})  # plane indices, in order
    # (planes, rows, columns, segments); fractional values rescaled to 0..1.
    if src.multi_frame:
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=src.sop_uids[0],
            source_frame_numbers=[int(src.frame_numbers[n] or 0) for n in present],
            segment_numbers=numbers,
            skip_overlap_checks=True,
        )
    else:
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[src.sop_uids[n] for n in present],
            segment_numbers=numbers,
            skip_overlap_checks=True,
        )
    per_class = []
    for s, cls in enumerate(class_of):
        volume = np.zeros(reference.shape, dtype=bool)
        for m, plane in enumerate(present):
            src.put(volume, plane, np.asarray(pixels[m, ..., s]) >= 0.5)
        per_class.append((cls, volume))
    return Volume(
        array=combine_masks(per_class, reference.shape, path, "segment", nested),
        affine=reference.affine,
        source=path,
    )
