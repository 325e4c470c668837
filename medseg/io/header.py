"""What a scan file's header says about its size, without reading its voxels (for estimates made before a run)."""

from __future__ import annotations

import math
from pathlib import Path

from medseg.io.scans import image_suffix


def scan_voxels(path: str | Path) -> int | None:
    """Number of values a scan holds (voxels x channels / time points), from its header(s) alone.

    Args:
        path: A NIfTI, NRRD or MHA/MHD file, or a DICOM series folder (:func:`medseg.io.dicom.folder_voxels`).

    Returns:
        The count, or ``None`` for another file kind or a header that cannot be read (the read itself reports
        such a scan properly later).
    """
    path = Path(path)
    if path.is_dir():
        from medseg.io.dicom import folder_voxels

        return folder_voxels(path)
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
