"""Decoding the pixels of an ordered DICOM series: SimpleITK/GDCM first, pydicom + pylibjpeg as a fallback.

SimpleITK's GDCM decodes uncompressed and JPEG / JPEG-LS / JPEG 2000 / RLE compressed series itself (GDCM
bundles OpenJPEG and CharLS; checked on TotalSegmentator's JPEG 2000 Lossless CT, which SimpleITK 2.5 reads
without pydicom). If GDCM cannot decode a compressed series (e.g. HTJ2K, or a SimpleITK built without a codec),
medseg falls back to pydicom + pylibjpeg (the ``dicom`` extra) and, when those are missing, raises
:class:`~medseg.errors.MissingDecoderError` naming the extra to install.
"""

from __future__ import annotations

import importlib
import importlib.util
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import SimpleITK as sitk

from medseg.errors import MissingDecoderError, UnreadableScanError
from medseg.io.geometry import sitk_to_array
from medseg.io.itk import sitk_message

__all__ = ["COMPRESSED_SYNTAXES", "INSTALL_HINT", "UNCOMPRESSED_SYNTAXES", "read_pixels", "transfer_syntax"]

INSTALL_HINT = 'pip install "medseg[dicom]"'

UNCOMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
}
COMPRESSED_SYNTAXES = {
    "1.2.840.10008.1.2.4.50": "JPEG Baseline",
    "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.201": "HTJ2K Lossless",
    "1.2.840.10008.1.2.4.202": "HTJ2K Lossless RPCL",
    "1.2.840.10008.1.2.4.203": "HTJ2K",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}


def transfer_syntax(path: str | Path) -> str | None:
    """The Transfer Syntax UID (0002,0010) of a DICOM Part-10 file, read from its file meta header; or None."""
    try:
        with Path(path).open("rb") as f:
            head = f.read(16384)
    except OSError:
        return None
    if head[128:132] != b"DICM":
        return None
    pos = 132
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
    # Group 0002 is always Explicit VR Little Endian, whatever the rest of the file uses.
    while pos + 8 <= len(head):
        group, element = struct.unpack_from("<HH", head, pos)
        if group != 0x0002:
            break
        vr = head[pos + 4 : pos + 6]
        if vr in long_vrs:
            length, start = struct.unpack_from("<I", head, pos + 8)[0], pos + 12
        else:
            length, start = struct.unpack_from("<H", head, pos + 6)[0], pos + 8
        if element == 0x0010:
            return head[start : start + length].decode("ascii", "replace").strip("\x00 ")
        pos = start + length
    return None


def _syntax_label(uid: str | None) -> str:
    if uid is None:
        return "unknown transfer syntax"
    name = COMPRESSED_SYNTAXES.get(uid) or UNCOMPRESSED_SYNTAXES.get(uid) or "unrecognised"
    return f"{name} ({uid})"


def read_pixels(files: list[Path], folder: Path, *, rescale_varies: bool = False) -> np.ndarray:
    """Voxels of a series whose files are already in slice order, as ``(I, J, K)`` = (columns, rows, slices).

    Rescale slope/intercept are applied (CT in HU).

    Args:
        files: The series' files in slice order.
        folder: The series folder, for error messages.
        rescale_varies: Slices have different RescaleSlope/Intercept (the result is then float32).

    Raises:
        UnreadableScanError: Corrupt pixel data, or colour images.
        MissingDecoderError: Compressed data that neither GDCM nor an installed pydicom plugin can decode.
    """
    try:
        try:
            return _read_pixels_sitk(files, rescale_varies)
        except RuntimeError as exc:
            syntax = transfer_syntax(files[0])
            if syntax in UNCOMPRESSED_SYNTAXES:
                raise UnreadableScanError(folder, f"SimpleITK could not read it ({sitk_message(exc)})") from exc
            return _read_pixels_pydicom(files, folder, syntax)
    except _ColourError as exc:
        raise UnreadableScanError(folder, "it holds colour (RGB) images; medseg reads greyscale scans") from exc


def _read_pixels_sitk(files: list[Path], rescale_varies: bool) -> np.ndarray:
    """Voxels of an ordered series through SimpleITK/GDCM, as ``(I, J, K)``. Raises RuntimeError on failure."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames([str(f) for f in files])
    if rescale_varies:
        # GDCM rescales each slice; the output type comes from the first one, so use float to keep every slice.
        reader.SetOutputPixelType(sitk.sitkFloat32)
    image = reader.Execute()
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise _ColourError()
    return sitk_to_array(image)


class _ColourError(Exception):
    """The series holds colour (RGB/palette) pixels."""


def _import_pydicom() -> ModuleType:
    return importlib.import_module("pydicom")


def _have_jpeg_decoders() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("pylibjpeg", "openjpeg"))


def _read_pixels_pydicom(files: list[Path], folder: Path, syntax: str | None) -> np.ndarray:
    """Voxels of an ordered series through pydicom (+ pylibjpeg for compressed data), as ``(I, J, K)``."""
    why = f"the series is compressed ({_syntax_label(syntax)}) and SimpleITK's GDCM could not decode it"
    try:
        pydicom = _import_pydicom()
    except ImportError as exc:
        raise MissingDecoderError(folder, f"{why}; install the DICOM decoders with: {INSTALL_HINT}") from exc
    planes = []
    slope_inter: set[tuple[float, float]] = set()
    for f in files:
        try:
            ds: Any = pydicom.dcmread(str(f))
            pixels = np.asarray(ds.pixel_array)
        except Exception as exc:  # pydicom signals a missing decoder with RuntimeError/NotImplementedError
            if not _have_jpeg_decoders():
                raise MissingDecoderError(folder, f"{why}; install the DICOM decoders with: {INSTALL_HINT}") from exc
            raise UnreadableScanError(folder, f"DICOM file '{f.name}' cannot be decoded ({exc})") from exc
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        slope_inter.add((slope, inter))
        if pixels.ndim != 2:
            raise _ColourError()
        values = pixels.astype(np.float64) * slope + inter if (slope, inter) != (1.0, 0.0) else pixels
        planes.append(values.T)  # pixel_array is (rows, columns) = (j, i)
    volume = np.stack(planes, axis=-1)
    if slope_inter == {(1.0, 0.0)}:
        return volume
    if all(float(s).is_integer() and float(i).is_integer() for s, i in slope_inter):
        # Integral rescale (CT HU): keep an integer type, as GDCM does.
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if volume.min() >= info.min and volume.max() <= info.max:
                return volume.astype(dtype)
    return volume.astype(np.float32)
