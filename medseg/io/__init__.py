"""Scan readers and mask writers: the only place that knows file formats and world coordinates.

Every reader returns a :class:`~medseg.volume.Volume` with ``array[i, j, k]`` in NIfTI voxel order and an
affine to RAS mm; every writer takes such a Volume as ``like`` and reproduces its grid exactly.

Modules: ``nifti`` (nibabel), ``itk`` (NRRD/MHA via SimpleITK), ``dicom`` (series folders: listing, slice
order, spacing checks), ``dicom_frames`` (multi-frame, RT dose and mosaic files), ``dicom_pixels`` (decoding,
incl. the pydicom fallback), ``grid_checks`` (degenerate / sheared affines), ``read_options`` (configured
channel, series, NaN handling), ``geometry``
(RAS/LPS and axis-order conversions), ``scans`` (finding and naming scans), ``reading`` / ``writing`` (the
public entry points), ``atomic`` (temp file + rename), ``dicom_seg`` / ``rtstruct`` (DICOM label objects, read + write,
on the source series found by ``dicom_source``), ``structure_masks`` (one mask per structure -> one label map:
SEG segments, RTSTRUCT ROIs, structure folders), ``slicer_seg`` (3D Slicer ``.seg.nrrd``, read + write) and
``segmentation`` (``load_label``: any label kind).
"""

from __future__ import annotations

from medseg.io.dicom import DicomSeriesInfo, list_dicom_series
from medseg.io.reading import load_volume
from medseg.io.scans import case_id_from_path, find_scans, is_supported_file
from medseg.io.segmentation import is_dicom_label_file, load_label, load_segmentation
from medseg.io.writing import save_mask, save_volume

__all__ = [
    "DicomSeriesInfo",
    "case_id_from_path",
    "find_scans",
    "is_dicom_label_file",
    "is_supported_file",
    "list_dicom_series",
    "load_label",
    "load_segmentation",
    "load_volume",
    "save_mask",
    "save_volume",
]
