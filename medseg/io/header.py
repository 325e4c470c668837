"""What a scan file's header says about its size, without reading its voxels (for estimates made before a run)."""

from __future__ import annotations

import math
from pathlib import Path

from medseg.io.scans import image_suffix


def scan_voxels(path: str | Path) -> int | None:
    """Number of values a scan holds (voxels x channels / time points), from its header(s) alone.

    Args:
        path: A NIfTI, NRRD or MHA/MHD file, or a DICOM series folder (see :func:`dicom_folder_voxels`).

    Returns:
        The count, or ``None`` for another file kind or a header that cannot be read (the read itself reports
        such a scan properly later).
    """
    path = Path(path)
    if path.is_dir():
        return dicom_folder_voxels(path)
    if not path.is_file():
        return None
    suffix = image_suffix(path)
    try:
        if suffix in (".nii", ".nii.gz"):
            import nibabel as nib

            image = nib.load(str(path))
            return int(math.prod(image.shape))  # type: ignore[attr-defined]  # a Nifti1Image: its header only
        if suffix is None:
            return None
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return int(math.prod(reader.GetSize())) * int(reader.GetNumberOfComponents())
    except Exception:
        return None


def dicom_folder_voxels(folder: Path) -> int | None:
    """Values a DICOM series folder holds: its DICOM files x the voxels of one image file's header.

    One header is read (a whole-body CT of 500 slices must not cost 500 header reads before a run starts); every
    other file is only checked for the ``DICM`` marker (132 bytes). A folder that also holds other series or a
    SEG / RTSTRUCT file counts them as slices too: an estimate on the safe side.

    Returns:
        The count, or ``None`` when the folder holds no DICOM file whose header an image reader can read.
    """
    import SimpleITK as sitk

    from medseg.io.scans import is_dicom_file
    from medseg.io.segmentation import is_dicom_label_file

    files = [p for p in sorted(folder.iterdir()) if p.is_file() and p.name.upper() != "DICOMDIR" and is_dicom_file(p)]
    for path in files:
        if is_dicom_label_file(path):
            continue
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue  # not an image GDCM reads (a report, a corrupt file): the next one may be
        return len(files) * int(math.prod(reader.GetSize())) * int(reader.GetNumberOfComponents())
    return None
