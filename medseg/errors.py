"""The medseg error hierarchy.

Every error a user can cause with bad input is a :class:`MedsegError` whose message names the file (or config
key) and the reason, so a clinician-researcher can act on it without reading a traceback. Batch jobs catch
``MedsegError`` per case, record it and go on.
"""

from __future__ import annotations

from pathlib import Path


class MedsegError(Exception):
    """Base class of every error medseg raises for bad input or a bad configuration."""


class UnreadableScanError(MedsegError):
    """A scan (file or DICOM folder) cannot be read: missing, corrupt, not an image, or an unsupported layout."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"Cannot read scan '{self.path}': {reason}")


class MultipleSeriesError(UnreadableScanError):
    """A DICOM folder holds several series and none was chosen with ``series=``."""


class MultiChannelScanError(UnreadableScanError):
    """A scan has several channels (a 4th axis, or vector pixels) and none was chosen with ``channel=``."""

    def __init__(self, path: str | Path, reason: str, *, n_channels: int, shape: tuple[int, ...]) -> None:
        self.n_channels = n_channels
        self.shape = shape
        super().__init__(path, reason)


class MissingDecoderError(UnreadableScanError):
    """A DICOM series uses a compressed transfer syntax no installed decoder can read."""


class GeometryMismatchError(MedsegError):
    """Two arrays or volumes that must share a voxel grid do not (shape, spacing, origin or direction)."""


class BadCaseError(MedsegError):
    """A training case is unusable: image and label disagree, labels outside the classes, a file missing."""


class ConfigError(MedsegError):
    """The configuration is invalid: unknown key, wrong type, missing folder. The message names the key path."""


class CheckpointError(MedsegError):
    """A checkpoint file is missing, unreadable, or incompatible with what is asked of it."""


class OutputExistsError(MedsegError):
    """An output file exists and ``overwrite`` was not requested."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        super().__init__(f"Output '{self.path}' already exists; pass overwrite=True to replace it")


class MultipleVolumesError(UnreadableScanError):
    """One DICOM file or series holds several volumes (echoes, diffusion directions, time points) at one grid."""


class ColourImageError(UnreadableScanError):
    """A scan holds colour (RGB/RGBA) voxels; medseg reads greyscale scans."""


class DegenerateGeometryError(UnreadableScanError):
    """A scan's affine cannot place its voxels in space (a zero-length axis, a singular matrix, NaN entries)."""


class RunFailedError(MedsegError):
    """The run itself cannot go on (as opposed to one bad case): e.g. its output disk is full or read-only.

    The command line stops with exit status 3 and this message; what was finished before is kept.
    """


class OutputStorageError(RunFailedError):
    """The output folder cannot take writes: the disk is full, over quota, read-only, or not writable."""

    def __init__(self, folder: str | Path, reason: str, detail: str = "") -> None:
        self.folder = Path(folder)
        self.reason = reason
        self.detail = detail
        super().__init__(f"Cannot write to '{self.folder}': {reason}" + (f". {detail}" if detail else ""))


class EmptyLabelsError(BadCaseError):
    """Every training label is empty (background only): there is nothing to learn, and a validation on empty
    labels would report a perfect Dice."""


class ForeignReferenceError(MedsegError):
    """A DICOM SEG or RTSTRUCT does not belong to the image it is read onto: another series, another frame of
    reference, instances the series does not hold, or a geometry that does not fit its grid."""


class SegmentNameError(MedsegError):
    """Segment (SEG) or ROI (RTSTRUCT) names do not match the configured classes: an unknown or a missing name."""


class ContourOutsideImageError(MedsegError):
    """An RTSTRUCT contour lies (partly) outside the image series it is rasterised onto."""
