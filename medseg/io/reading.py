"""``load_volume``: one entry point for every scan format medseg reads."""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MultiChannelScanError, UnreadableScanError
from medseg.io.dicom import load_dicom, series_uid_of_file
from medseg.io.grid_checks import check_grid
from medseg.io.itk import ITK_SUFFIXES, load_itk
from medseg.io.nifti import NIFTI_SUFFIXES, load_nifti
from medseg.io.read_options import read_options
from medseg.io.scans import SUPPORTED_SUFFIXES, image_suffix, is_dicom_file
from medseg.io.segmentation import is_dicom_label_file
from medseg.volume import Volume


def load_volume(
    path: str | Path,
    *,
    series: str | None = None,
    channel: int | None = None,
    nan_as_zero: bool | None = None,
    label: bool = False,
) -> Volume:
    """Reads a scan into a :class:`~medseg.volume.Volume` (array ``(I, J, K)``, affine voxel -> RAS mm).

    Supported: NIfTI (``.nii``, ``.nii.gz``; the header is kept so masks can copy its qform/sform), NRRD
    (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``) and DICOM series (a folder; or one of its files,
    which stands for the series it belongs to), including multi-frame files, RT dose grids and Siemens mosaics.
    Every grid is checked: a degenerate affine is refused, a sheared one logged as a warning.

    Arguments left as ``None`` take the process's defaults (:func:`medseg.io.read_options.set_read_options`;
    a pipeline run sets them from ``data.series`` / ``data.channel`` / ``data.nan_as_zero``). A default series
    only chooses between several series and a default channel only applies to scans that have channels.

    Args:
        path: Image file or DICOM series folder.
        series: DICOM only: which series when the folder holds several (SeriesInstanceUID, a unique
            SeriesDescription or a unique UID prefix). Ignored for other formats.
        channel: Which channel/time point of a 4D volume to read. A 4th dimension of size 1 is dropped
            without asking.
        nan_as_zero: Read NaN voxels of NIfTI/NRRD/MHA files as 0 (with a warning) instead of refusing them.
        label: The file is a label map: the configured default channel does not apply to it, and a file with
            several channels (a one-hot or per-class mask stack) is refused: which channel is which class is not
            recorded in the file, so medseg does not guess.

    Returns:
        The volume; ``source`` is ``path``.

    Raises:
        UnreadableScanError: Missing path, unsupported or corrupt file, 4D without ``channel``, non-finite
            voxels, an irregular DICOM stack (e.g. a missing slice). Subclasses: MultiChannelScanError (several
            channels and none chosen, or a label file with channels), MultipleSeriesError (several
            DICOM series, none chosen), MultipleVolumesError (one file or series holding several volumes),
            MissingDecoderError (compressed DICOM without a decoder), ColourImageError (RGB voxels),
            DegenerateGeometryError (an affine that cannot place voxels in space).
    """
    path = Path(path)
    if label:
        try:
            return _load(path, series=series, channel=channel, nan_as_zero=nan_as_zero, default_channel=None)
        except MultiChannelScanError as err:
            raise MultiChannelScanError(
                path,
                f"it is a label file with {err.n_channels} channels (shape {err.shape}), e.g. one-hot or one mask "
                "per class; medseg reads labels as one class value per voxel, and the file does not say which "
                "channel is which class. Save one label map instead (with nibabel and numpy, e.g. "
                "np.argmax(data, axis=3) if channel k is class k and every voxel has one), or one mask file per "
                "class in a folder named after the classes (a structure folder, see README 'Label files'); labels "
                "of several time points go in one 3D file each, paired with a 3D image of that time point",
                n_channels=err.n_channels,
                shape=err.shape,
            ) from None
    return _load(path, series=series, channel=channel, nan_as_zero=nan_as_zero, default_channel=read_options().channel)


def _load(
    path: Path, *, series: str | None, channel: int | None, nan_as_zero: bool | None, default_channel: int | None
) -> Volume:
    defaults = read_options()
    nan_zero = defaults.nan_as_zero if nan_as_zero is None else nan_as_zero
    if not path.exists():
        raise UnreadableScanError(path, "no such file or folder")
    if path.is_dir():
        volume = load_dicom(path, series=series, default_series=defaults.series)
    else:
        suffix = image_suffix(path)
        if suffix in NIFTI_SUFFIXES:
            volume = load_nifti(path, channel=channel, default_channel=default_channel, nan_as_zero=nan_zero)
            check_grid(volume.affine, path)
            return volume
        if suffix in ITK_SUFFIXES:
            volume = load_itk(path, channel=channel, default_channel=default_channel, nan_as_zero=nan_zero)
            check_grid(volume.affine, path)
            return volume
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
        chosen = series_uid_of_file(path) if series is None else series
        volume = load_dicom(path.parent, series=chosen)
    if channel not in (None, 0):
        raise UnreadableScanError(path, f"channel={channel} requested but a DICOM series has a single channel")
    check_grid(volume.affine, path)
    return volume
