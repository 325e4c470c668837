"""Postprocessing of label volumes, and deciding on validation data which steps help (as nnU-Net does).

Two steps, each applied per foreground class:

* **Largest connected component**: voxels of class ``c`` outside the largest 3D connected component of ``c``
  become background. Connectivity is *full* (26-neighbourhood in 3D) so that parts of one structure that touch
  only along an edge or corner (common for thin structures in anisotropic scans) are not cut off.
* **Fill holes**: background voxels enclosed by class ``c`` become ``c``. Holes are filled **per 2D slice along
  the model's slice axis** when ``axis`` is given (what the predictor does: a 2D model's spurious holes are
  per-slice, and a 3D fill would miss any hole that opens into a neighbouring slice), or in 3D when ``axis`` is
  ``None``. Voxels of *other* classes are never overwritten (a tumour core inside an oedema is not a hole).

The order is fixed: largest component first, then fill holes (holes of removed islands are not filled).

With overlapping regions (``membership``, ``medseg.data.regions``) a step acts on a region's mask (every voxel
whose painted class lies inside it), as nnU-Net's region postprocessing does: voxels of a region outside its
largest component become background (whatever region they were painted as), and background holes enclosed by
a region are painted as the innermost region enclosing them. Steps on one region then change the others' masks
too, so :func:`decide_postprocessing` judges each region's step by the mean Dice over all regions.

:func:`decide_postprocessing` compares mean validation Dice per class with and without each step and enables a
step for a class only where it strictly improves that class's mean Dice (each step changes only its own class's
voxels and background, so per-class Dice decides exactly what the mean Dice over classes would).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import numpy as np
from scipy import ndimage

from medseg.data.regions import class_mask
from medseg.data.unannotated import annotated_voxels


class PostprocessingPlan(TypedDict):
    """Which classes (indices into the checkpoint's ``classes``) each step is applied to."""

    largest_component: list[int]
    fill_holes: list[int]


def _check_classes(labels: np.ndarray, classes: Sequence[int]) -> list[int]:
    out = [int(c) for c in classes]
    if any(c <= 0 for c in out):
        raise ValueError(f"postprocessing applies to foreground classes (>= 1), got {out}")
    if labels.ndim != 3:
        raise ValueError(f"label volume must be 3D (I, J, K), got shape {labels.shape}")
    return out


def _class_boxes(labels: np.ndarray) -> list[tuple[slice, ...] | None]:
    """Per label value ``v >= 1``, at index ``v - 1``, the smallest box holding its voxels (``None`` if absent).

    Both steps work inside a class's box only: its components and holes lie within it. On a CT or a small
    structure in a large field of view the box is a small part of the volume, so the cost follows the
    structure's size. One pass over the volume finds every class's box (scipy's ``find_objects``), where one
    full-volume comparison and three reductions per class made a 41-structure CT's postprocessing cost seconds.
    """
    arr = np.asarray(labels)
    return list(ndimage.find_objects(arr if arr.dtype.kind == "u" else arr.astype(np.int64, copy=False)))


def _box_of(
    boxes: Sequence[tuple[slice, ...] | None], c: int, membership: np.ndarray | None = None
) -> tuple[slice, ...] | None:
    if membership is None:
        return boxes[c - 1] if c - 1 < len(boxes) else None
    # A region's box: the union of the boxes of the painted classes inside it.
    inside = [box for k in np.flatnonzero(membership[c]) if 0 < k <= len(boxes) and (box := boxes[k - 1]) is not None]
    if not inside:
        return None
    return tuple(slice(min(b[a].start for b in inside), max(b[a].stop for b in inside)) for a in range(len(inside[0])))


def _grown(box: tuple[slice, ...], margin: int, shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels on every side, clipped to ``shape``."""
    return tuple(slice(max(b.start - margin, 0), min(b.stop + margin, n)) for b, n in zip(box, shape, strict=True))


def _class_components(
    labels: np.ndarray, c: int, box: tuple[slice, ...] | None, membership: np.ndarray | None = None
) -> tuple[tuple[slice, ...], np.ndarray, np.ndarray, int] | None:
    """Class (or region) ``c``'s box, its mask and 3D components there (full connectivity), their number; ``None``
    if it is absent. Full (26-neighbour) connectivity: parts touching only at an edge or corner are one piece."""
    if box is None:
        return None
    mask = class_mask(np.asarray(labels)[box], c, membership)
    components, n = ndimage.label(mask, structure=ndimage.generate_binary_structure(3, 3))
    return box, mask, components, int(n)


def component_counts(labels: np.ndarray, classes: Sequence[int], membership: np.ndarray | None = None) -> list[int]:
    """Number of 3D connected components of each class (or region, with ``membership``) in ``classes`` (the
    connectivity of :func:`keep_largest_component`); 0 for an absent class."""
    boxes = _class_boxes(labels)
    counts = []
    for c in classes:
        found = _class_components(labels, int(c), _box_of(boxes, int(c), membership), membership)
        counts.append(0 if found is None else found[3])
    return counts


def keep_largest_component(
    labels: np.ndarray, classes: Sequence[int], membership: np.ndarray | None = None
) -> np.ndarray:
    """Keeps only the largest 3D connected component of each class in ``classes``; the rest becomes background.

    Args:
        labels: ``(I, J, K)`` integer label volume (not modified).
        classes: Foreground class indices to process; classes absent from ``labels`` are left alone.
        membership: Overlapping regions (``Regions.membership``): ``classes`` are regions, each taken as its mask.

    Returns:
        A new label volume of the same dtype.
    """
    out = labels.copy()
    classes = _check_classes(labels, classes)
    source, boxes = labels, _class_boxes(labels)
    for c in classes:
        if membership is not None:
            # Regions overlap: an earlier region's step may have changed this one's voxels, so each reads ``out``.
            source, boxes = out, _class_boxes(out)
        found = _class_components(source, c, _box_of(boxes, c, membership), membership)
        if found is None or found[3] <= 1:
            continue
        box, mask, components, _ = found
        sizes = np.bincount(components.ravel())
        sizes[0] = 0
        region = out[box]  # a view: the assignment writes into ``out``
        region[mask & (components != int(np.argmax(sizes)))] = 0
    return out


def fill_holes(
    labels: np.ndarray, classes: Sequence[int], axis: int | None = None, membership: np.ndarray | None = None
) -> np.ndarray:
    """Fills background holes enclosed by each class in ``classes``.

    Args:
        labels: ``(I, J, K)`` integer label volume (not modified).
        classes: Foreground class indices to process.
        axis: Fill per 2D slice along this axis (the model's slice axis), or in 3D when ``None``.
        membership: Overlapping regions (``Regions.membership``): ``classes`` are regions, innermost (highest
            index) first; background enclosed by a region's mask is painted as that region, so a hole in the core
            is the core's, not the whole tumour's.

    Returns:
        A new label volume of the same dtype; only former background voxels change.
    """
    out = labels.copy()
    classes = _check_classes(labels, classes)
    if membership is not None:
        # Innermost region first: a hole in the core lies in the whole tumour too, and is the core's.
        classes = sorted(classes, reverse=True)
    source, boxes = labels, _class_boxes(labels)
    for c in classes:
        if membership is not None:
            source, boxes = out, _class_boxes(out)  # as in keep_largest_component
        tight = _box_of(boxes, c, membership)
        if tight is None:
            continue
        # A one-voxel margin of background around the box stands for everything outside it (that background is
        # connected to the array's border, so a region touching the margin is not a hole).
        box = _grown(tight, 1, labels.shape)
        mask = class_mask(source[box], c, membership)
        if axis is None:
            filled = ndimage.binary_fill_holes(mask)
        else:
            # 2D structure on the slice plane and none across slices = independent per-slice filling.
            structure = np.zeros((3, 3, 3), dtype=bool)
            index: list[slice | int] = [slice(None)] * 3
            index[axis] = 1
            structure[tuple(index)] = ndimage.generate_binary_structure(2, 1)
            filled = ndimage.binary_fill_holes(mask, structure=structure)
        region = out[box]  # a view: the assignment below writes into ``out``
        region[filled & (region == 0)] = c
    return out


def apply_postprocessing(
    labels: np.ndarray,
    *,
    largest_component: Sequence[int] = (),
    fill_holes_classes: Sequence[int] = (),
    axis: int | None = None,
    membership: np.ndarray | None = None,
) -> np.ndarray:
    """Applies largest-component then hole filling to the given classes (returns ``labels`` itself if nothing to do).

    Args:
        labels: ``(I, J, K)`` integer label volume.
        largest_component: Classes to reduce to their largest connected component.
        fill_holes_classes: Classes whose holes are filled.
        axis: Slice axis for per-slice hole filling, ``None`` for 3D (see :func:`fill_holes`).
        membership: Overlapping regions (``Regions.membership``): the classes are regions (module docstring).
    """
    out = labels
    if largest_component:
        out = keep_largest_component(out, largest_component, membership)
    if fill_holes_classes:
        out = fill_holes(out, fill_holes_classes, axis, membership)
    return out


def _dice(pred: np.ndarray, gt: np.ndarray) -> float:
    # Both empty counts as perfect agreement (the convention of medseg.metrics); postprocessing never turns a
    # non-empty prediction empty, so such cases cannot sway a decision either way.
    total = int(pred.sum()) + int(gt.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, gt).sum()) / total


def _mean_dice(preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], c: int, n_classes: int | None = None) -> float:
    # With n_classes (ground truths marking unannotated voxels as n_classes): over each one's annotated voxels;
    # a ground truth with none is no evidence either way.
    zipped = zip(preds, gts, strict=True)
    pairs = [annotated_voxels(p, g, n_classes) if n_classes is not None else (p, g) for p, g in zipped]
    scores = [_dice(pair[0] == c, pair[1] == c) for pair in pairs if pair is not None]
    return float(np.mean(scores)) if scores else 0.0


def decide_postprocessing(
    pred_label_volumes: Sequence[np.ndarray],
    gt_label_volumes: Sequence[np.ndarray],
    n_classes: int,
    *,
    axis: int | None = None,
    unannotated: bool = False,
    membership: np.ndarray | None = None,
) -> PostprocessingPlan:
    """Decides, per class, whether each postprocessing step improves mean validation Dice.

    The largest-component step is decided first; hole filling is then judged on the predictions after the
    chosen largest-component steps, i.e. in the order the steps are applied at prediction time.

    Args:
        pred_label_volumes: Predicted ``(I, J, K)`` label volumes of the validation cases.
        gt_label_volumes: Ground-truth label volumes, same order and shapes.
        n_classes: Number of classes including background.
        axis: Slice axis used for hole filling (must match the one used at prediction time; ``None`` = 3D).
        unannotated: Ground truths may mark unannotated voxels (index ``n_classes``); Dice leaves them out.
        membership: Overlapping regions (``Regions.membership``): each region's step is kept where it strictly
            improves the mean Dice over all regions and cases (a step on one region changes the others), taken
            region by region in order on the predictions as the steps kept so far left them.

    Returns:
        ``{"largest_component": [class idx], "fill_holes": [class idx]}``: the classes where the step strictly
        improved that class's mean Dice over the cases.

    Raises:
        ValueError: If the lists differ in length or a pair differs in shape.
    """
    if len(pred_label_volumes) != len(gt_label_volumes):
        raise ValueError(f"{len(pred_label_volumes)} predictions but {len(gt_label_volumes)} ground truths")
    for i, (p, g) in enumerate(zip(pred_label_volumes, gt_label_volumes, strict=True)):
        if p.shape != g.shape:
            raise ValueError(f"case {i}: prediction shape {p.shape} != ground-truth shape {g.shape}")
    plan: PostprocessingPlan = {"largest_component": [], "fill_holes": []}
    if not pred_label_volumes:
        return plan
    if membership is not None:
        return _decide_for_regions(pred_label_volumes, gt_label_volumes, n_classes, axis, membership)
    masked = n_classes if unannotated else None
    # Largest component of class c changes only class-c voxels (to background), so classes are judged apart.
    for c in range(1, n_classes):
        lcc = [keep_largest_component(p, [c]) for p in pred_label_volumes]
        if _mean_dice(lcc, gt_label_volumes, c, masked) > _mean_dice(pred_label_volumes, gt_label_volumes, c, masked):
            plan["largest_component"].append(c)
    # Hole filling is judged on the predictions as they will be after the chosen largest-component step.
    base = [apply_postprocessing(p, largest_component=plan["largest_component"]) for p in pred_label_volumes]
    for c in range(1, n_classes):
        filled = [fill_holes(p, [c], axis) for p in base]
        if _mean_dice(filled, gt_label_volumes, c, masked) > _mean_dice(base, gt_label_volumes, c, masked):
            plan["fill_holes"].append(c)
    return plan


def _regions_mean_dice(
    preds: Sequence[np.ndarray], gts: Sequence[np.ndarray], n_classes: int, membership: np.ndarray
) -> float:
    """Mean over cases and regions of each region's Dice."""
    scores = [
        _dice(class_mask(p, r, membership), class_mask(g, r, membership))
        for p, g in zip(preds, gts, strict=True)
        for r in range(1, n_classes)
    ]
    return float(np.mean(scores))


def _decide_for_regions(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    n_classes: int,
    axis: int | None,
    membership: np.ndarray,
) -> PostprocessingPlan:
    # Greedy in the order apply_postprocessing runs the steps: largest component region by region, then holes.
    plan: PostprocessingPlan = {"largest_component": [], "fill_holes": []}
    current = list(preds)
    best = _regions_mean_dice(current, gts, n_classes, membership)
    for key in ("largest_component", "fill_holes"):
        # The order apply_postprocessing runs them in: fill_holes takes the innermost region first.
        for c in range(1, n_classes) if key == "largest_component" else range(n_classes - 1, 0, -1):
            if key == "largest_component":
                trial = [keep_largest_component(p, [c], membership) for p in current]
            else:
                trial = [fill_holes(p, [c], axis, membership) for p in current]
            score = _regions_mean_dice(trial, gts, n_classes, membership)
            if score > best:
                plan[key].append(c)
                current, best = trial, score
    plan["fill_holes"].sort()  # stored ascending, like every plan; fill_holes orders them itself
    return plan
