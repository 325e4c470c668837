"""How scans are read when the caller does not say: which channel, which DICOM series, NaN voxels as 0.

``load_volume`` takes these as arguments; a pipeline run sets them once from the config (``data.channel``,
``data.series``, ``data.nan_as_zero``) with :func:`set_read_options`, so every stage (training, prediction,
evaluation) reads every scan the same way without passing them through each layer. Hints in error messages
name both spellings (:data:`CHANNEL_HINT`, :data:`SERIES_HINT`, :data:`NAN_HINT`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHANNEL_HINT", "NAN_HINT", "SERIES_HINT", "ReadOptions", "read_options", "set_read_options"]

CHANNEL_HINT = (
    "channel=N in Python, or the config key data.channel (on the command line: --set data.channel=N); a model "
    "trained on several channels reads them all with Predictor.read_input"
)
SERIES_HINT = (
    "series=... in Python, or the config key data.series (on the command line: --set data.series=UID-or-description)"
)
NAN_HINT = (
    "nan_as_zero=True in Python, or the config key data.nan_as_zero (on the command line: --set data.nan_as_zero=true)"
)


@dataclass(frozen=True)
class ReadOptions:
    """Defaults for :func:`medseg.io.load_volume` arguments left as ``None``.

    Attributes:
        channel: Channel / time point of 4D or multi-component scans.
        series: DICOM series (SeriesInstanceUID, unique description or UID prefix) in folders holding several.
        nan_as_zero: Read NaN voxels as 0 (with a warning) instead of refusing the scan.
    """

    channel: int | None = None
    series: str | None = None
    nan_as_zero: bool = False


_current = ReadOptions()


def set_read_options(options: ReadOptions) -> None:
    """Makes ``options`` the defaults of every later ``load_volume`` call in this process."""
    global _current
    _current = options


def read_options() -> ReadOptions:
    """The defaults in force (see :func:`set_read_options`)."""
    return _current
