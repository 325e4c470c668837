"""Data preparation: case discovery and checks, normalisation, slicing, augmentation, datasets, class weights,
splits. See DESIGN.md; each concern is one module.

Names are importable from here (``from medseg.data import discover_cases``); modules load on first use so that
e.g. ``medseg.data.cases`` does not pull in MONAI.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medseg.data.cases import Case, DatasetSpec, SkippedCase, discover_cases
    from medseg.data.checks import check_pair
    from medseg.data.class_weights import compute_class_weights, resolve_class_weights
    from medseg.data.dataset import SliceDataset, worker_init_fn
    from medseg.data.label_reading import LabelReading
    from medseg.data.normalization import NormalizationParams, fit_normalization, normalize, resolve_scheme
    from medseg.data.prepare import PreparedCase, PreparedData, prepare_cases, prepare_training_data
    from medseg.data.regions import Regions, class_mask
    from medseg.data.sampling import ForegroundSampler, foreground_sampler
    from medseg.data.slicing import (
        Padding,
        label_to_slices,
        pad_to_shape,
        padded_size,
        resolve_slice_axis,
        slices_to_volume,
        unpad,
        volume_to_slices,
    )
    from medseg.data.splits import split_cases
    from medseg.data.transforms import train_transforms

_LAZY = {
    "Case": "cases",
    "DatasetSpec": "cases",
    "SkippedCase": "cases",
    "discover_cases": "cases",
    "check_pair": "checks",
    "compute_class_weights": "class_weights",
    "resolve_class_weights": "class_weights",
    "SliceDataset": "dataset",
    "worker_init_fn": "dataset",
    "LabelReading": "label_reading",
    "NormalizationParams": "normalization",
    "fit_normalization": "normalization",
    "normalize": "normalization",
    "resolve_scheme": "normalization",
    "PreparedCase": "prepare",
    "PreparedData": "prepare",
    "prepare_cases": "prepare",
    "prepare_training_data": "prepare",
    "Regions": "regions",
    "class_mask": "regions",
    "ForegroundSampler": "sampling",
    "foreground_sampler": "sampling",
    "Padding": "slicing",
    "label_to_slices": "slicing",
    "pad_to_shape": "slicing",
    "padded_size": "slicing",
    "resolve_slice_axis": "slicing",
    "slices_to_volume": "slicing",
    "unpad": "slicing",
    "volume_to_slices": "slicing",
    "split_cases": "splits",
    "train_transforms": "transforms",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"medseg.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'medseg.data' has no attribute {name!r}")


__all__ = [
    "Case",
    "DatasetSpec",
    "ForegroundSampler",
    "LabelReading",
    "NormalizationParams",
    "Padding",
    "PreparedCase",
    "PreparedData",
    "Regions",
    "SkippedCase",
    "SliceDataset",
    "check_pair",
    "class_mask",
    "compute_class_weights",
    "discover_cases",
    "fit_normalization",
    "foreground_sampler",
    "label_to_slices",
    "normalize",
    "pad_to_shape",
    "padded_size",
    "prepare_cases",
    "prepare_training_data",
    "resolve_class_weights",
    "resolve_scheme",
    "resolve_slice_axis",
    "slices_to_volume",
    "split_cases",
    "train_transforms",
    "unpad",
    "volume_to_slices",
    "worker_init_fn",
]
