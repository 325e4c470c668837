"""Predicted masks as DICOM objects: SEG or RTSTRUCT on the scan's own series (``inference.output_format``).

The batch predictor calls :func:`write_dicom_mask` instead of ``save_mask`` for the DICOM formats; the options
(codes, header fields, algorithm identification) come from the config through :func:`dicom_write_options`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medseg.data.regions import class_mask
from medseg.io.dicom_seg import ClassCode, DicomWriteOptions
from medseg.io.scans import image_suffix
from medseg.volume import Volume

if TYPE_CHECKING:
    from medseg.config import Config

DICOM_FORMATS = ("dicom-seg", "rtstruct")
#: File ending of the DICOM outputs.
DICOM_SUFFIX = "dcm"
#: Format of the NIfTI copy (``inference.also_nifti``) and of probability maps next to a DICOM output.
NIFTI_FORMAT = "nii.gz"


def file_suffix(output_format: str) -> str:
    """File ending (no dot) of masks written in ``output_format``."""
    return DICOM_SUFFIX if output_format in DICOM_FORMATS else output_format


def non_dicom_reason(path: Path, output_format: str) -> str | None:
    """Why ``path`` cannot get a ``output_format`` output (a NIfTI/NRRD/MHA file), or ``None`` when it may."""
    if output_format not in DICOM_FORMATS or path.is_dir() or image_suffix(path) is None:
        return None
    return (
        f"output_format {output_format} needs a DICOM series input (the SEG/RTSTRUCT references its instances); "
        f"'{path.name}' is a {image_suffix(path)} file: use output_format nii.gz, nrrd or mha for it"
    )


def dicom_write_options(cfg: Config, checkpoint: str | Path) -> DicomWriteOptions:
    """The DICOM output options of a run: class codes from ``data.class_codes``, header fields from
    ``inference.dicom``, algorithm source = the checkpoint file."""
    d = cfg.inference.dicom
    codes = {
        name: ClassCode(c.code, c.scheme, c.meaning, c.category_code, c.category_scheme, c.category_meaning)
        for name, c in cfg.data.class_codes.items()
    }
    return DicomWriteOptions(
        class_codes=codes,
        series_description=d.series_description,
        series_number=d.series_number,
        manufacturer=d.manufacturer,
        omit_empty_frames=d.omit_empty_frames,
        fractional=d.fractional,
        algorithm_source=f"checkpoint {Path(checkpoint).resolve()}",
    )


def write_dicom_mask(
    output_format: str,
    mask: np.ndarray,
    like: Volume,
    path: Path,
    classes: Sequence[str],
    *,
    probabilities: np.ndarray | None,
    options: DicomWriteOptions,
    overwrite: bool,
    membership: np.ndarray | None = None,
) -> Path:
    """Writes ``mask`` as a DICOM SEG (``dicom-seg``) or RTSTRUCT (``rtstruct``) on ``like``'s series.

    With ``membership`` (a region model: ``Regions.membership``) each segment / ROI is a region's whole mask, so
    they overlap as the regions do (the whole tumour holds the core), where a label map's painted classes would
    call "core minus enhancing" the core.
    """
    segments = None
    if membership is not None:
        segments = np.stack([class_mask(mask, c, membership) for c in range(1, len(classes))])
    if output_format == "dicom-seg":
        from medseg.io.dicom_seg import save_dicom_seg

        return save_dicom_seg(
            mask,
            like,
            path,
            classes,
            probabilities=probabilities,
            options=options,
            overwrite=overwrite,
            segments=segments,
        )
    from medseg.io.rtstruct import save_rtstruct

    return save_rtstruct(mask, like, path, classes, options=options, overwrite=overwrite, segments=segments)
