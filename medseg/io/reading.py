"""``load_volume``: one entry point for every scan format medseg reads."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import UnreadableScanError
from medseg.io.dicom import load_dicom, series_uid_of_file
from medseg.io.itk import ITK_SUFFIXES, load_itk
from medseg.io.nifti import NIFTI_SUFFIXES, load_nifti
from medseg.io.scans import SUPPORTED_SUFFIXES, image_suffix, is_dicom_file
from medseg.io.segmentation import is_dicom_label_file
from medseg.volume import Volume


def load_volume(path: str | Path, *, series: str | None = None, channel: int | None = None) -> Volume:
    """Reads a scan into a :class:`~medseg.volume.Volume` (array ``(I, J, K)``, affine voxel -> RAS mm).

    Supported: NIfTI (``.nii``, ``.nii.gz``; the header is kept so masks can copy its qform/sform), NRRD
    (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder; or one of its files,
    which stands for the series it belongs to).

    Args:
        path: Image file or DICOM series folder.
        series: DICOM only: which series when the folder holds several (SeriesInstanceUID, a unique
            SeriesDescription or a unique UID prefix). Ignored for other formats.
        channel: Which channel/time point of a 4D volume to read. A 4th dimension of size 1 is dropped
            without asking.

    Returns:
        The volume; ``source`` is ``path``.

    Raises:
        UnreadableScanError: Missing path, unsupported or corrupt file, 4D without ``channel``, non-finite
            voxels, an irregular DICOM stack (e.g. a missing slice). Subclasses: MultipleSeriesError (several
            DICOM series, none chosen), MissingDecoderError (compressed DICOM without a decoder).
    """
    path = Path(path)
    if not path.exists():
        raise UnreadableScanError(path, "no such file or folder")
    if path.is_dir():
        volume = load_dicom(path, series=series)
    else:
        suffix = image_suffix(path)
        if suffix in NIFTI_SUFFIXES:
            return load_nifti(path, channel=channel)
        if suffix in ITK_SUFFIXES:
            return load_itk(path, channel=channel)
        if is_dicom_label_file(path):
            raise UnreadableScanError(
                path,
                "it is a DICOM SEG / RTSTRUCT (labels that reference an image series, not an image); read it with "
                "medseg.io.load_segmentation(path, reference=load_volume(<image series folder>))",
            )
        if not is_dicom_file(path):
            raise UnreadableScanError(
                path, f"unsupported file type; medseg reads {', '.join(SUPPORTED_SUFFIXES)} files and DICOM folders"
            )
        volume = load_dicom(path.parent, series=series_uid_of_file(path) if series is None else series)
    if channel not in (None, 0):
        raise UnreadableScanError(path, f"channel={channel} requested but a DICOM series has a single channel")
    return volume
