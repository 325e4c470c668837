"""medseg: medical-image segmentation for clinical research.

Public API for research scripts::

    import medseg
    scan = medseg.load_volume("case.nii.gz")              # or a DICOM series folder, .nrrd, .mha
    predictor = medseg.Predictor.from_checkpoint("runs/x/checkpoints/best.pt")
    mask = predictor.predict(scan)                         # a Volume on the scan's grid
    medseg.save_mask(mask.array, like=scan, path="case_mask.nii.gz")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medseg.errors import (
    BadCaseError,
    CheckpointError,
    ConfigError,
    ContourOutsideImageError,
    ForeignReferenceError,
    GeometryMismatchError,
    MedsegError,
    MissingDecoderError,
    MultiChannelScanError,
    MultipleSeriesError,
    OutputExistsError,
    SegmentNameError,
    UnreadableScanError,
)
from medseg.volume import Volume

__version__ = "0.1.0"

if TYPE_CHECKING:
    from medseg.config import Config, load_config
    from medseg.inference.predictor import Predictor
    from medseg.io import load_segmentation, load_volume, save_mask

# Heavy modules (torch, SimpleITK) load on first use so `import medseg` stays fast.
_LAZY = {
    "load_volume": "medseg.io",
    "load_segmentation": "medseg.io",
    "save_mask": "medseg.io",
    "Config": "medseg.config",
    "load_config": "medseg.config",
    "Predictor": "medseg.inference.predictor",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


__all__ = [
    "BadCaseError",
    "CheckpointError",
    "Config",
    "ConfigError",
    "ContourOutsideImageError",
    "ForeignReferenceError",
    "GeometryMismatchError",
    "MedsegError",
    "MissingDecoderError",
    "MultiChannelScanError",
    "MultipleSeriesError",
    "OutputExistsError",
    "Predictor",
    "SegmentNameError",
    "UnreadableScanError",
    "Volume",
    "__version__",
    "load_config",
    "load_segmentation",
    "load_volume",
    "save_mask",
]
