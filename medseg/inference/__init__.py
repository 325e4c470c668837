"""Prediction: a checkpoint applied to volumes (:class:`Predictor`), postprocessing, batch runs over scan folders.

``from medseg.inference import Predictor`` loads torch; ``predict_folder`` / ``BatchResult`` (which also load
the readers) import on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medseg.inference.predictor import ModelSpec, Predictor

if TYPE_CHECKING:
    from medseg.inference.batch import BatchResult, predict_folder

_LAZY = {"predict_folder": "medseg.inference.batch", "BatchResult": "medseg.inference.batch"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medseg.inference' has no attribute {name!r}")


__all__ = ["BatchResult", "ModelSpec", "Predictor", "predict_folder"]
