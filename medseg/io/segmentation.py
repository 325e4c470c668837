"""``load_segmentation``: label volumes from DICOM SEG and RTSTRUCT files, on the grid of their image series."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medseg.errors import UnreadableScanError
from medseg.io.dicom_source import dicom_object_kind
from medseg.volume import Volume

__all__ = ["is_dicom_label_file", "load_segmentation"]


def is_dicom_label_file(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM SEG or RTSTRUCT file (a label object, not an image)."""
    return dicom_object_kind(path) is not None


def load_segmentation(path: str | Path, reference: Volume, classes: Sequence[str] | None = None) -> Volume:
    """Reads a DICOM SEG or RTSTRUCT file as a label volume on the grid of ``reference``.

    SEG frames map to the reference series' slices by ReferencedSOPInstanceUID; RTSTRUCT contours are
    rasterised onto its slices (even-odd rule, so holes stay holes). Segments / ROIs map to ``classes`` by name.

    Args:
        path: SEG or RTSTRUCT file.
        reference: The image the labels belong to, read from its DICOM series folder with ``load_volume``.
        classes: Class names, background first (``data.classes``); ``None``: segment / ROI ``n`` -> label ``n``.

    Returns:
        A label Volume on ``reference``'s grid (uint8), ``source`` = ``path``.

    Raises:
        UnreadableScanError: ``path`` is neither a SEG nor an RTSTRUCT file.
        ForeignReferenceError: The object belongs to another series or frame of reference.
        SegmentNameError: A segment / ROI name is not a class, or a class has none.
        ContourOutsideImageError: RTSTRUCT contours outside the image.
    """
    path = Path(path)
    kind = dicom_object_kind(path)
    if kind == "seg":
        from medseg.io.dicom_seg import load_dicom_seg

        return load_dicom_seg(path, reference, classes)
    if kind == "rtstruct":
        from medseg.io.rtstruct import load_rtstruct

        return load_rtstruct(path, reference, classes)
    raise UnreadableScanError(path, "not a DICOM SEG or RTSTRUCT file")
