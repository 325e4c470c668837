"""Labels without foreground: refused when every training label is empty, a warning for each empty one.

A model trained on labels that are all background learns to predict background everywhere, and the Dice of an
empty prediction against an empty label is 1.0 by convention: training would report a perfect score and save
``best.pt`` for a model that segments nothing. This is checked on the prepared cases, before the first step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from medseg.data.prepare import PreparedCase
from medseg.errors import EmptyLabelsError

log = logging.getLogger(__name__)

#: How many case ids an error message lists before it says "and N more".
LISTED_IDS = 10


def _describe(cases: Sequence[PreparedCase]) -> str:
    names = [
        f"'{p.id}'" + (f" ({p.case.label})" if p.case is not None and p.case.label is not None else "") for p in cases
    ]
    more = f" and {len(names) - LISTED_IDS} more" if len(names) > LISTED_IDS else ""
    return ", ".join(names[:LISTED_IDS]) + more


def empty_label_cases(cases: Sequence[PreparedCase]) -> list[PreparedCase]:
    """The labelled cases whose label holds no voxel > 0 (unannotated voxels, ``medseg.data.unannotated``, are
    none)."""
    return [p for p in cases if p.label is not None and not p.foreground.any()]


def unannotated_cases(cases: Sequence[PreparedCase]) -> list[PreparedCase]:
    """The labelled cases whose label annotates no voxel at all (every voxel holds ``data.ignore_label``)."""
    return [p for p in cases if p.label is not None and not p.annotated.any()]


def check_foreground(train: Sequence[PreparedCase], val: Sequence[PreparedCase]) -> None:
    """Refuses training labels that are all empty; warns for each empty label (training or validation).

    Args:
        train: Prepared training cases.
        val: Prepared validation cases.

    Raises:
        EmptyLabelsError: Every labelled training case has an empty label (the message lists them).
    """
    labelled = [p for p in train if p.label is not None]
    empty_train = empty_label_cases(labelled)
    blank = unannotated_cases([*labelled, *val])
    blank_ids = {p.id for p in blank}
    if labelled and all(p.id in blank_ids for p in labelled):
        raise EmptyLabelsError(
            f"No training label annotates any voxel: every voxel of {_describe(labelled)} holds data.ignore_label "
            "(unannotated). Check data.ignore_label (or the 'ignore' label of dataset.json): it must be the value "
            "of the voxels nobody drew, not of the background"
        )
    if labelled and len(empty_train) == len(labelled):
        raise EmptyLabelsError(
            f"All {len(labelled)} training labels are empty (no voxel > 0): {_describe(empty_train)}. "
            "There is nothing to learn, and validation on empty labels would score a meaningless Dice of 1.0. "
            "Check that data.root (or data.label_glob / data.dicom_mask_pattern) points at the label files and "
            "that their values are the class indices (1, 2, ...), not all 0"
        )
    for p in blank:
        label = p.case.label if p.case is not None else None
        log.warning(
            "Case '%s': label%s annotates no voxel (all data.ignore_label); it is neither trained on nor scored",
            p.id,
            f" '{label}'" if label is not None else "",
        )
    for p in [q for q in [*empty_train, *empty_label_cases(val)] if q.id not in blank_ids]:
        label = p.case.label if p.case is not None else None
        log.warning(
            "Case '%s': label%s holds no foreground (background only); it counts as Dice 1.0 when the "
            "prediction is empty too",
            p.id,
            f" '{label}'" if label is not None else "",
        )
