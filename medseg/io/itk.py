"""NRRD (``.nrrd``, ``.nhdr``) and MetaImage (``.mha``, ``.mhd``) through SimpleITK; LPS <-> RAS at the boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medseg.errors import MultiChannelScanError, UnreadableScanError
from medseg.io._arrays import check_finite, to_3d
from medseg.io.geometry import array_to_sitk, sitk_affine, sitk_to_array
from medseg.io.read_options import CHANNEL_HINT
from medseg.volume import Volume

ITK_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Formats written as one self-contained file, so the atomic temp-file-and-rename write is sound
#: (.nhdr/.mhd point to a separate data file by name, which a rename would break).
ITK_WRITE_SUFFIXES = (".seg.nrrd", ".nrrd", ".mha")


def sitk_message(exc: BaseException) -> str:
    """The useful line of a SimpleITK exception (they start with a C++ source location)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "ERROR:" in ln and ln.split("ERROR:", 1)[1].strip():
            return ln.split("ERROR:", 1)[1].strip()
    return lines[-1] if lines else type(exc).__name__


def volume_from_sitk(
    image: sitk.Image,
    path: Path,
    *,
    channel: int | None = None,
    default_channel: int | None = None,
    nan_as_zero: bool = False,
) -> Volume:
    """Converts a SimpleITK image (2D, 3D or 4D; scalar or vector pixels) to a 3D Volume in RAS.

    Args:
        image: The image.
        path: Its file, for messages.
        channel: Channel (pixel component or 4th-dimension index) asked for explicitly.
        default_channel: The configured channel, used only when the image has channels.
        nan_as_zero: Read NaN voxels as 0 instead of refusing the image.

    Raises:
        MultiChannelScanError: Several channels and none chosen.
        UnreadableScanError: A channel out of range.
    """
    n_comp = image.GetNumberOfComponentsPerPixel()
    if channel is None and (n_comp > 1 or image.GetDimension() == 4):
        channel = default_channel
    if n_comp > 1:
        if channel is None:
            raise MultiChannelScanError(
                path,
                f"pixels have {n_comp} components (channels); choose one (0..{n_comp - 1}) with {CHANNEL_HINT}",
                n_channels=n_comp,
                shape=(*image.GetSize(), n_comp),
            )
        if not 0 <= channel < n_comp:
            raise UnreadableScanError(path, f"channel={channel} is out of range: pixels have {n_comp} components")
        image = sitk.VectorIndexSelectionCast(image, channel)
        channel = None
    dim = image.GetDimension()
    if dim == 2:
        image = sitk.JoinSeries(image)  # one slice; k spacing 1 mm, k direction the slice normal
    elif dim == 4:
        size = list(image.GetSize())
        n = size[3]
        if n > 1 and channel is None:
            raise MultiChannelScanError(
                path,
                f"it is a 4D volume with {n} channels/time points; choose one (0..{n - 1}) with {CHANNEL_HINT}",
                n_channels=n,
                shape=tuple(size),
            )
        index = 0 if channel is None else channel
        if not 0 <= index < n:
            raise UnreadableScanError(path, f"channel={channel} is out of range: the volume has {n} channels")
        image = sitk.Extract(
            image, [*size[:3], 0], [0, 0, 0, index], sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX
        )
        channel = None
    elif dim != 3:
        raise UnreadableScanError(path, f"it has {dim} dimensions; medseg reads 3D or 4D")
    array = to_3d(sitk_to_array(image), path, channel)
    array = check_finite(array, path, nan_as_zero=nan_as_zero)
    return Volume(array=array, affine=sitk_affine(image), source=path)


def load_itk(
    path: Path, *, channel: int | None = None, default_channel: int | None = None, nan_as_zero: bool = False
) -> Volume:
    """Reads an NRRD/NHDR/MHA/MHD file.

    Raises:
        UnreadableScanError: SimpleITK cannot read it, or see :func:`volume_from_sitk`.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        data = detached_data_file(path)
        if data is not None and not data.exists():
            raise UnreadableScanError(
                path, f"its voxels are kept in '{data}' (named in its header), which does not exist"
            ) from exc
        raise UnreadableScanError(path, f"SimpleITK could not read it ({sitk_message(exc)})") from exc
    return volume_from_sitk(image, path, channel=channel, default_channel=default_channel, nan_as_zero=nan_as_zero)


def detached_data_file(path: Path) -> Path | None:
    """The voxel file a detached header names (``.nhdr``: ``data file:``, ``.mhd``: ``ElementDataFile =``), or
    ``None`` (an attached file, a list or pattern of files, or an unreadable header)."""
    keys = {".nhdr": ("data file:", "datafile:"), ".mhd": ("elementdatafile",)}.get(path.suffix.lower())
    if keys is None:
        return None
    try:
        with path.open("rb") as fh:
            head = fh.read(16384).decode("latin-1")
    except OSError:
        return None
    for line in head.splitlines():
        lowered = line.strip().lower()
        for key in keys:
            if lowered.startswith(key):
                value = line.strip()[len(key) :].lstrip(" =:").strip()
                if not value or value.upper() in ("LIST", "LOCAL") or "%" in value or " " in value:
                    return None
                return path.parent / value
    return None


def write_itk(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Writes an ``(I, J, K)`` array with the grid of ``affine`` (voxel -> RAS) as compressed NRRD/MHA."""
    sitk.WriteImage(array_to_sitk(array, affine), str(path), useCompression=True)
