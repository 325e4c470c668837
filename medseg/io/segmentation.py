"""``load_segmentation``: label volumes from DICOM SEG and RTSTRUCT files, on the grid of their image series."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import pydicom

from medseg.errors import UnreadableScanError
from medseg.io.dicom_source import dicom_object_kind
from medseg.io.scans import strip_scan_ending
from medseg.io.slicer_seg import is_slicer_segmentation, load_slicer_segmentation, slicer_segment_names
from medseg.io.structure_masks import load_structure_folder, structure_files
from medseg.volume import Volume

__all__ = [
    "LabelKind",
    "dicom_label_file",
    "is_dicom_label_file",
    "label_kind",
    "label_names",
    "load_label",
    "load_segmentation",
]


def is_dicom_label_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM SEG or RTSTRUCT file (a label object, not an image)."""
    return dicom_object_kind(path) is not None


def load_segmentation(
    path: str | Path,
    reference: Volume,
    classes: Sequence[str] | None = None,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    nested: bool = False,
) -> Volume:
    """Reads a DICOM SEG or RTSTRUCT file as a label volume on the grid of ``reference``.

    SEG frames map to the reference series' slices by ReferencedSOPInstanceUID; RTSTRUCT contours are
    rasterised onto its slices (even-odd rule, so holes stay holes). Segments / ROIs map to ``classes`` by name.

    Args:
        path: SEG or RTSTRUCT file.
        reference: The image the labels belong to, read from its DICOM series folder with ``load_volume``.
        classes: Class names, background first (``data.classes``); ``None``: segment / ROI ``n`` -> label ``n``.
        ignore_unlisted: Leave out segments / ROIs that are no class's (``data.unlisted_labels: background``)
            instead of refusing them.
        aliases: Other names of some classes (``data.class_aliases``: class name -> names), matched like the class
            names: segments / ROIs named differently by other planning systems.
        nested: Segments may contain each other (overlapping regions, ``data.regions``): where they overlap the
            higher class index is kept, which is the painted region, without the overlap warning.

    Returns:
        A label Volume on ``reference``'s grid (uint8), ``source`` = ``path``.

    Raises:
        UnreadableScanError: ``path`` is neither a SEG nor an RTSTRUCT file.
        ForeignReferenceError: The object belongs to another series or frame of reference.
        SegmentNameError: A segment / ROI name is not a class (unless ``ignore_unlisted``), or a class has none.
        ContourOutsideImageError: RTSTRUCT contours outside the image.
    """
    path = Path(path)
    kind = dicom_object_kind(path)
    if kind == "seg":
        from medseg.io.dicom_seg import load_dicom_seg

        return load_dicom_seg(path, reference, classes, ignore_unlisted=ignore_unlisted, aliases=aliases, nested=nested)
    if kind == "rtstruct":
        from medseg.io.rtstruct import load_rtstruct

        return load_rtstruct(path, reference, classes, ignore_unlisted=ignore_unlisted, aliases=aliases, nested=nested)
    raise UnreadableScanError(path, "not a DICOM SEG or RTSTRUCT file")


def dicom_label_file(path: str | Path) -> Path | None:
    """The SEG / RTSTRUCT file ``path`` stands for: the file itself, or the only DICOM file of a folder that
    holds one (a "mask series" exported as a single SEG); ``None`` when ``path`` is no such object."""
    path = Path(path)
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
        return files[0] if len(files) == 1 and is_dicom_label_file(files[0]) else None
    return path if is_dicom_label_file(path) else None


#: What kind of label a path holds: a label map read as an image (``"map"``), a DICOM SEG / RTSTRUCT
#: (``"dicom"``), a structure folder (``"structures"``) or a 3D Slicer segmentation (``"slicer"``). All but a
#: label map name their segments, which are matched to the classes by name.
LabelKind = Literal["map", "dicom", "structures", "slicer"]


def label_kind(path: str | Path) -> LabelKind:
    """The kind of label at ``path`` (see :data:`LabelKind`); decided once, from names and headers only."""
    if structure_files(path) is not None:
        return "structures"
    if is_slicer_segmentation(path):
        return "slicer"
    return "dicom" if dicom_label_file(path) is not None else "map"


def label_names(path: str | Path) -> list[str] | None:
    """The structure names a label gives, in its own order, read from names and headers only: a structure
    folder's file names, a 3D Slicer segmentation's segment names, a DICOM SEG's segment labels or an RTSTRUCT's
    ROI names. ``None`` for a label map, which names nothing.

    Raises:
        UnreadableScanError: A SEG / RTSTRUCT whose header pydicom cannot read.
    """
    kind = label_kind(path)
    if kind == "structures":
        files = structure_files(path)
        assert files is not None  # label_kind said so
        return [strip_scan_ending(f.name) for f in files]
    if kind == "slicer":
        return slicer_segment_names(path)
    if kind == "map":
        return None
    label_file = dicom_label_file(path)
    assert label_file is not None  # label_kind said so
    seg = dicom_object_kind(label_file) == "seg"
    sequence, name = ("SegmentSequence", "SegmentLabel") if seg else ("StructureSetROISequence", "ROIName")
    try:
        ds = pydicom.dcmread(label_file, stop_before_pixels=True, specific_tags=[sequence])
    except Exception as exc:
        raise UnreadableScanError(label_file, f"pydicom could not read its header ({exc})") from exc
    return [str(item.get(name, "")) for item in ds.get(sequence, [])]


def load_label(
    path: str | Path,
    image: Volume | str | Path | None,
    classes: Sequence[str] | None = None,
    *,
    ignore_unlisted: bool = False,
    aliases: Mapping[str, Sequence[str]] | None = None,
    nested: bool = False,
) -> Volume:
    """Reads a label of any kind medseg accepts (:func:`label_kind`): a label map (``load_volume``), a DICOM SEG /
    RTSTRUCT rasterised onto ``image``'s grid (``load_segmentation``), a structure folder (one mask file per
    structure, :func:`medseg.io.structure_masks.load_structure_folder`) or a 3D Slicer ``.seg.nrrd``
    (:func:`medseg.io.slicer_seg.load_slicer_segmentation`). The last two are on their own grid, as a label map
    is; whether it is the image's is for the caller to check.

    Args:
        path: Label file, DICOM mask series folder, SEG / RTSTRUCT file (or a folder holding just one), or a
            structure folder.
        image: The image the labels belong to (a Volume, or its path to be read); needed for SEG / RTSTRUCT.
        classes: Class names for SEG / RTSTRUCT / structure-folder / Slicer name matching (see
            :func:`load_segmentation`).
        ignore_unlisted: Structure files, Slicer or SEG segments and RTSTRUCT ROIs that are no class's are left out
            instead of refused.
        aliases: Other names of some classes (``data.class_aliases``), matched like the class names.
        nested: Segments may contain each other (overlapping regions, ``data.regions``): where they overlap the
            higher class index is kept, which is the painted region, without the overlap warning.

    Raises:
        UnreadableScanError: As ``load_volume``; or a SEG / RTSTRUCT without ``image``.
        SegmentNameError: Segment / ROI / structure names that do not match ``classes``.
    """
    from medseg.io.reading import load_volume

    kind = label_kind(path)
    if kind == "structures":
        return load_structure_folder(path, classes, ignore_unlisted=ignore_unlisted, aliases=aliases, nested=nested)
    if kind == "slicer":
        return load_slicer_segmentation(path, classes, ignore_unlisted=ignore_unlisted, aliases=aliases, nested=nested)
    if kind == "map":
        return load_volume(path, label=True)
    if image is None:
        raise UnreadableScanError(path, "a DICOM SEG / RTSTRUCT is read onto its image series, and none was given")
    reference = image if isinstance(image, Volume) else load_volume(image)
    label_file = dicom_label_file(path)
    assert label_file is not None  # label_kind said so
    return load_segmentation(
        label_file, reference, classes, ignore_unlisted=ignore_unlisted, aliases=aliases, nested=nested
    )
