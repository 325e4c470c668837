"""Unannotated voxels: sparse annotation (``data.ignore_label``, nnU-Net v2's ``ignore`` label).

A dataset annotated sparsely (every fifth slice, scribbles, a region of interest) stores one value for "not
annotated". Reading it as background would teach the model that the unannotated structure is background, so
medseg reads that value as the label index ``n_classes``, one past the last class, and every consumer of labels
leaves those voxels out:

- the loss (``medseg.losses``) and the choice of training slices (a slice without an annotated voxel is not
  drawn; ``medseg.data.dataset``);
- class frequencies, class weights, the output-bias prior and the fingerprint count annotated voxels only;
- validation Dice and evaluation Dice / IoU are computed over annotated voxels only; the surface distances and
  the true volume of a partly annotated case cannot be measured and are not reported (NaN); a case with no
  annotated voxel at all has no Dice either (NaN, left out of every mean, not the 1.0 of two empty masks);
- predictions never hold it (the network has no output for it).

Label resampling (one-hot, bilinear, argmax) carries the index as one more channel, so an annotated region keeps
its extent on the target grid.
"""

from __future__ import annotations

import numpy as np


def label_count(n_classes: int, unannotated: int | None) -> int:
    """How many label indices a label array may hold: the classes, plus one when some voxels are unannotated."""
    return n_classes + (unannotated is not None)


def foreground_mask(label: np.ndarray, unannotated: int | None) -> np.ndarray:
    """Where ``label`` holds a class other than background (unannotated voxels excluded), as bool."""
    label = np.asarray(label)
    fg = label > 0
    if unannotated is not None:
        fg &= label != unannotated
    return fg


def annotated_mask(label: np.ndarray, n_classes: int) -> np.ndarray | None:
    """Where ``label`` is annotated (bool), or ``None`` when every voxel is (nothing to leave out).

    Args:
        label: Class indices; unannotated voxels hold ``n_classes``.
        n_classes: Number of classes including background.
    """
    label = np.asarray(label)
    if label.size == 0 or int(label.max()) < n_classes:
        return None
    return label < n_classes


def without_unannotated(label: np.ndarray, n_classes: int) -> np.ndarray:
    """``label`` with unannotated voxels read as background, for statistics of the annotated foreground (the
    intensity percentiles CT normalisation is fitted on); ``label`` itself when all is annotated."""
    keep = annotated_mask(label, n_classes)
    return label if keep is None else np.where(keep, label, 0).astype(label.dtype, copy=False)


def annotated_voxels(pred: np.ndarray, gt: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``pred`` and ``gt`` at the voxels ``gt`` annotates (flattened), or both unchanged when it annotates all:
    what Dice and IoU of a partly annotated case are computed over. ``None`` when ``gt`` annotates no voxel:
    such a case cannot be scored (two empty arrays would give Dice 1.0)."""
    keep = annotated_mask(gt, n_classes)
    if keep is None:
        return np.asarray(pred), np.asarray(gt)
    if not keep.any():
        return None
    return np.asarray(pred)[keep], np.asarray(gt)[keep]
