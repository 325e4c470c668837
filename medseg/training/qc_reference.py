"""The training-time QC reference stored in ``best.pt`` as ``qc_reference`` (see ``medseg.inference.qc``).

Two parts, gathered without reading any training file twice:

* :class:`RecordingReader` wraps the trainer's scan reader: while the data stage reads each training scan and
  label once, it notes the scan's intensity statistics, spacing and shape (closest-RAS order) and the label's
  class volumes.
* :func:`validation_outputs` predicts the validation cases with the best weights and the decided
  postprocessing, exactly as the predictor will, and measures components and foreground confidence; these are
  the "normal" values the output checks compare a new prediction with.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medseg.config import InferenceConfig
from medseg.data.cases import Case
from medseg.data.label_reading import LabelReading
from medseg.data.prepare import Reader
from medseg.data.unannotated import annotated_mask
from medseg.inference.predictor import Predictor
from medseg.inference.qc import (
    assess,
    build_reference,
    geometry_features,
    intensity_features,
    label_volumes_ml,
    output_features,
)
from medseg.io.channels import ChannelStack, load_channels
from medseg.io.orientation import to_canonical
from medseg.volume import Volume

log = logging.getLogger(__name__)


class RecordingReader:
    """A scan reader that also records the QC statistics of what it reads (one read serves training and QC).

    Args:
        reader: The reader that does the work.
        classes: Class names, background first (for the label volumes).
        labels: How the label files are read (stored values, unlisted values); ``None`` = class k as k.
    """

    def __init__(self, reader: Reader, classes: Sequence[str], labels: LabelReading | None = None) -> None:
        self.reader = reader
        self.classes = list(classes)
        self.label_reading = labels or LabelReading()
        self.images: dict[Path, dict[str, float]] = {}
        self.labels: dict[Path, dict[str, float]] = {}
        self._label_paths: set[Path] = set()

    def expect_labels(self, cases: Sequence[Case]) -> None:
        """Says which paths are label files (their class volumes are recorded instead of intensities)."""
        self._label_paths = {Path(c.label) for c in cases if c.label is not None}

    def __call__(self, path: Path, /, *, channel: int | None = None, label: bool = False) -> Volume:
        if label:
            volume = self.reader(path, label=True)
        else:
            volume = self.reader(path) if channel is None else self.reader(path, channel=channel)
        key = Path(path)
        if key in self._label_paths:
            labels = np.rint(np.asarray(volume.array))
            try:
                labels = self.label_reading.indices(labels, len(self.classes), np.uint16)
            except ValueError:  # refused by the data checks, which name the file and the values
                return volume
            if annotated_mask(labels, len(self.classes)) is None:  # a partly annotated label's volumes are not true
                regions = self.label_reading.regions
                membership = None if regions is None else regions.membership()
                self.labels[key] = label_volumes_ml(labels, volume.voxel_volume, self.classes, membership)
        elif not channel:  # a 4D file's first channel: the one QC measures at prediction (a case's reference)
            canon, _ = to_canonical(volume)
            feats = intensity_features(np.asarray(volume.array))
            feats.update(geometry_features(canon.spacing, canon.shape))
            self.images[key] = feats
        return volume


def validation_outputs(
    best_path: Path,
    val_cases: Sequence[Case],
    reader: Reader,
    *,
    device: str,
    inference: InferenceConfig,
) -> list[dict[str, float]]:
    """:func:`medseg.inference.qc.output_features` of each validation case predicted with the best checkpoint.

    The predictor is loaded from ``best.pt`` itself (its plan, channels and decided postprocessing), so the
    reference describes exactly the outputs the predict stage will make, measured the way it measures them.

    Args:
        best_path: ``best.pt``, postprocessing already decided.
        val_cases: The validation cases (their scans are read again: prediction starts from the file).
        reader: Scan reader.
        device: Where to predict.
        inference: The run's prediction settings (precision, batch size, flips, postprocessing).
    """
    predictor = Predictor.from_checkpoint(
        best_path,
        device=device,
        precision=inference.precision,
        batch_size=inference.batch_size,
        tta_flips=inference.tta_flips,
        tta_scales=inference.tta_scales,
        postprocessing=inference.postprocessing,
    )
    channels = predictor.spec.channels
    out = []
    for case in val_cases:
        if len(channels) > 1 or case.channel_files:
            read: Volume | ChannelStack = load_channels(
                list(case.channel_files) or [case.image], channels, reader, case_id=case.id
            )
        else:
            read = reader(case.image)
        mask, maps = predictor.predict_with_confidence(read)
        labels = np.asarray(mask.array)
        membership = predictor.membership
        voxel = mask.voxel_volume  # the scan's grid: |det|, as predictions.csv counts volumes
        out.append(output_features(labels, None, voxel, predictor.classes, confidence=maps, membership=membership))
    return out


def qc_reference(
    recorder: RecordingReader,
    train_cases: Sequence[Case],
    val_features: Sequence[dict[str, float]],
    classes: Sequence[str],
) -> dict[str, Any]:
    """The checkpoint's ``qc_reference`` from what ``recorder`` saw of the training cases and the validation outputs.

    Logs how many validation cases the default thresholds flag (they should be few: they are normal scans).
    """
    images = [recorder.images[Path(c.image)] for c in train_cases if Path(c.image) in recorder.images]
    labels = [recorder.labels[Path(c.label)] for c in train_cases if c.label and Path(c.label) in recorder.labels]
    intensity = [{k: v for k, v in f.items() if not k.startswith(("spacing_", "shape_"))} for f in images]
    geometry = [{k: v for k, v in f.items() if k.startswith(("spacing_", "shape_"))} for f in images]
    reference = build_reference(classes, intensity, geometry, labels, val_features)
    flagged = sum(bool(assess(f, reference).flags) for f in val_features)
    reference["val_flagged_by_default"] = int(flagged)  # in the report: validation scans are normal, few should be
    log.info(
        "QC reference: %d training scans, %d validation predictions (the default output thresholds flag %d of them)",
        len(images),
        len(val_features),
        flagged,
    )
    return reference
