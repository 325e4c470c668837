"""Validation on whole volumes: slices predicted, stacked back into the volume, Dice per class per case.

Slice Dice would over-count empty slices (both empty = 1) and weigh small slices like large ones; what a
researcher reports is the Dice of the 3D structure, so that is what picks the best checkpoint. The forward
pass is :func:`medseg.inference.forward.forward_slices`, the code the predictor uses, so the validation Dice is
the Dice the saved model will give.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from medseg.data.prepare import PreparedCase, label_dtype
from medseg.data.regions import class_mask
from medseg.data.slicing import slices_to_volume
from medseg.data.unannotated import annotated_voxels
from medseg.inference.budget import BatchSizeOption, settings_for_slices
from medseg.inference.settings import InferenceSettings
from medseg.inference.slabs import forward_labels
from medseg.metrics import dice
from medseg.models.fusion import fold_batchnorm


@dataclass
class ValidationResult:
    """Dice of one validation pass.

    Attributes:
        per_case: ``{case id: [Dice of class 1, ..., class n-1]}``.
        per_class: Mean over cases, one value per foreground class.
        mean: Mean over cases and foreground classes (the number that selects the best checkpoint).
        predictions: Predicted ``(I, J, K)`` label volumes, in case order (kept only when asked for).
        ground_truths: Ground-truth label volumes, same order (kept only when asked for).
    """

    per_case: dict[str, list[float]]
    per_class: list[float]
    mean: float
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    ground_truths: list[np.ndarray] = field(default_factory=list, repr=False)


def validate_volumes(
    model: nn.Module,
    cases: Sequence[PreparedCase],
    settings: InferenceSettings,
    *,
    axis: int,
    keep_volumes: bool = False,
    batch_size: BatchSizeOption | None = None,
    memory_gb: float | None = None,
    membership: np.ndarray | None = None,
) -> ValidationResult:
    """Predicts every validation case and scores it against its label volume.

    Args:
        model: The network; it is not changed (validation runs a folded copy, ``medseg.models.fusion``).
        cases: Prepared validation cases (``id``, ``network_input(start, stop)``: normalised 2.5D slices
            (n, C, H, W), ``label`` (N, H, W), optionally ``unannotated``: the label index of unannotated voxels),
            all sliced along ``axis``.
        settings: The forward pass (classes, mode, device, precision, padding as in training, batch size).
        axis: The slice axis (to reassemble the volumes).
        keep_volumes: Also return the predicted and true label volumes (for the postprocessing decision).
        batch_size: ``"auto"`` sizes the batch per case from its slice size and ``memory_gb``, as the predictor
            does (``medseg.inference.budget``); an int replaces ``settings.batch_size``; ``None`` keeps it.
        memory_gb: Budget of one forward batch for ``"auto"``; ``None`` = from the machine.
        membership: Overlapping regions (``Regions.membership``): each region is scored as its own mask.

    Returns:
        A :class:`ValidationResult`; with no cases, ``mean`` is NaN.
    """
    n_classes = settings.n_classes
    # The weights the predictor will run: BatchNorm folded into the convolutions, on a copy (training goes on).
    model = fold_batchnorm(model)
    per_case: dict[str, list[float]] = {}
    preds: list[np.ndarray] = []
    gts: list[np.ndarray] = []
    for case in cases:
        case_settings = settings
        hw = tuple(int(s) for s in case.image.shape[2:])
        if batch_size is not None:
            case_settings = settings_for_slices(settings, batch_size, model, case.network_channels, hw, memory_gb)
        # Batch by batch: the 2.5D input is gathered per batch (prepared cases store each slice once) and labels
        # are taken per batch, so neither a case's 2.5D stack nor its float32 probabilities are ever held whole
        # (a CT case's would be GBs).
        labels = np.empty((case.n_slices, *hw), dtype=label_dtype(n_classes))
        step = case_settings.batch_size
        for start in range(0, case.n_slices, step):
            stop = min(start + step, case.n_slices)
            labels[start:stop] = forward_labels(model, case.network_input(start, stop), case_settings)
        pred = slices_to_volume(labels, axis)
        gt = slices_to_volume(np.asarray(case.label), axis)
        # Unannotated voxels (data.ignore_label) are left out.
        marked = getattr(case, "unannotated", None) is not None  # optional: PreparedCase has it
        scored = annotated_voxels(pred, gt, n_classes) if marked else (pred, gt)
        if scored is None:  # nothing annotated: no score (two empty masks would count as Dice 1.0)
            continue
        pred_c, gt_c = scored
        per_case[str(case.id)] = [
            dice(class_mask(pred_c, c, membership), class_mask(gt_c, c, membership)) for c in range(1, n_classes)
        ]
        if keep_volumes:
            preds.append(pred)
            gts.append(gt)
    if not per_case:
        return ValidationResult({}, [float("nan")] * (n_classes - 1), float("nan"))
    table = np.asarray(list(per_case.values()), dtype=np.float64)
    per_class = [float(v) for v in table.mean(axis=0)]
    return ValidationResult(per_case, per_class, float(table.mean()), preds, gts)
