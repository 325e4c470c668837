"""PNG overlays of ground-truth and predicted contours on the slice with the most label.

Uses matplotlib's object API with the Agg canvas directly (no ``pyplot``), so drawing needs no display, does not
change the process-wide backend and is safe in batch jobs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from medseg.class_display import class_palette
from medseg.data.regions import class_mask
from medseg.data.unannotated import foreground_mask
from medseg.errors import GeometryMismatchError
from medseg.io.atomic import atomic_path

# tab10 in pairs: ground truth of class c takes an even entry, the prediction the odd one next to it, so the
# two contours of one class and those of different classes are all distinguishable.
_TAB10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


PAIRED_CLASSES = 5
"""Up to this many foreground classes, ground truth and prediction of a class get two colours (tab10 pairs)."""


def class_colours(index: int, n_classes: int = PAIRED_CLASSES) -> tuple[str, str]:
    """Colours ``(ground truth, prediction)`` for foreground class ``index`` (1-based) of ``n_classes``.

    Up to :data:`PAIRED_CLASSES` classes a tab10 pair, so every contour has its own colour. With more, tab10
    would repeat (class 6 in class 1's colours), so each class takes its own colour from
    :func:`medseg.class_display.class_palette` for both contours; the line style (solid, dashed) tells them apart.
    """
    if n_classes <= PAIRED_CLASSES:
        k = 2 * (index - 1)
        return _TAB10[k % 10], _TAB10[(k + 1) % 10]
    colour = class_palette(n_classes)[index - 1]
    return colour, colour


def overlay_axis(spacing: Sequence[float] | np.ndarray) -> int:
    """The axis to slice along: the coarsest one (the acquisition direction), the last on ties."""
    sp = np.asarray(spacing, dtype=float)
    return int(len(sp) - 1 - np.argmax(sp[::-1]))


def pick_slice(gt: np.ndarray, pred: np.ndarray, axis: int, n_classes: int | None = None) -> int:
    """Index along ``axis`` of the slice with the most ground-truth foreground.

    Falls back to the prediction's foreground when the ground truth is empty, and to the middle slice when both
    are empty. With ``n_classes``, ground-truth voxels marked unannotated (index ``n_classes``,
    ``medseg.data.unannotated``) are no foreground: a sparse ground truth is shown on an annotated slice.
    """
    for labels in (gt, pred):
        other_axes = tuple(a for a in range(labels.ndim) if a != axis)
        counts = np.count_nonzero(labels if n_classes is None else foreground_mask(labels, n_classes), axis=other_axes)
        if counts.any():
            return int(np.argmax(counts))
    return gt.shape[axis] // 2


def _window(slice2d: np.ndarray) -> tuple[float, float]:
    # Robust window: MR intensities are not calibrated and a few bright voxels would wash the slice out.
    lo, hi = (float(v) for v in np.percentile(slice2d, [1.0, 99.0]))
    if hi <= lo:
        lo, hi = float(slice2d.min()), float(slice2d.max())
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def draw_overlay(
    path: str | Path,
    *,
    case_id: str,
    gt: np.ndarray,
    pred: np.ndarray,
    classes: Sequence[str],
    spacing: Sequence[float] | np.ndarray,
    image: np.ndarray | None = None,
    dice_by_class: Mapping[str, float] | None = None,
    title: str | None = None,
    membership: np.ndarray | None = None,
) -> Path:
    """Draws one overlay PNG and writes it atomically.

    The slice is taken along the coarsest axis (:func:`overlay_axis`) where the ground truth has the most
    foreground. The background is the image (grey, 1st-99th percentile window) or, without an image, the
    ground-truth label map in grey levels. Ground-truth contours are solid, prediction contours dashed, each
    class and source in its own colour (:func:`class_colours`). Physical aspect ratio is kept.

    Args:
        path: Output ``.png`` file.
        case_id: Shown in the title.
        gt: Ground-truth label map (3D, or 2D to draw as is).
        pred: Predicted label map, same shape.
        classes: Class names by label value, background first.
        spacing: Voxel size in mm per axis.
        image: Intensity image on the same grid, or ``None``.
        dice_by_class: Dice per class name, shown in the legend.
        title: First title line; default ``case_id``.
        membership: Overlapping regions (``Regions.membership``): each region's outline is drawn, not its
            painted class's.

    Returns:
        The written path.

    Raises:
        GeometryMismatchError: If ``pred`` or ``image`` does not have ``gt``'s shape.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if pred.shape != gt.shape or (image is not None and np.shape(image) != gt.shape):
        raise GeometryMismatchError(
            f"Overlay for '{case_id}': shapes differ (gt {gt.shape}, prediction {pred.shape}, "
            f"image {None if image is None else np.shape(image)})"
        )
    sp = np.asarray(spacing, dtype=float)
    if gt.ndim == 3:
        axis = overlay_axis(sp)
        index = pick_slice(gt, pred, axis, len(classes))
        gt2, pred2 = np.take(gt, index, axis=axis), np.take(pred, index, axis=axis)
        img2 = np.take(np.asarray(image), index, axis=axis) if image is not None else None
        sp2 = np.delete(sp, axis)
        where = f"axis {'IJK'[axis]}, slice {index}"
    elif gt.ndim == 2:
        gt2, pred2, img2, sp2, where = gt, pred, image, sp, "2D"
    else:
        raise GeometryMismatchError(f"Overlay for '{case_id}': expected a 2D or 3D label map, got {gt.shape}")

    # Display with the first in-plane axis horizontal and the second vertical (origin lower), in mm.
    n0, n1 = gt2.shape
    extent = (-0.5 * sp2[0], (n0 - 0.5) * sp2[0], -0.5 * sp2[1], (n1 - 0.5) * sp2[1])
    x = np.arange(n0) * sp2[0]
    y = np.arange(n1) * sp2[1]

    fig = Figure(figsize=(6.4, 6.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    if img2 is not None:
        data = np.asarray(img2, dtype=np.float64)
        lo, hi = _window(data)
        ax.imshow(data.T, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent, interpolation="nearest")
    else:
        ax.imshow(
            gt2.T.astype(float),
            cmap="gray",
            vmin=0,
            # Headroom so the last class is light grey, not the white of the figure.
            vmax=1.25 * max(len(classes) - 1, 1),
            origin="lower",
            extent=extent,
            interpolation="nearest",
        )

    n_fg = len(classes) - 1
    paired = n_fg <= PAIRED_CLASSES
    handles: list[Line2D] = []
    not_here = 0
    for index_c, name in enumerate(classes):
        if index_c == 0:
            continue
        c_gt, c_pred = class_colours(index_c, n_fg)
        score = ""
        if dice_by_class is not None and name in dice_by_class and np.isfinite(dice_by_class[name]):
            score = f" (Dice {dice_by_class[name]:.3f})"
        sources: tuple[tuple[np.ndarray, str, Literal["solid", "dashed"], str], ...] = (
            (gt2, c_gt, "solid", "GT"),
            (pred2, c_pred, "dashed", "Pred"),
        )
        drawn = False
        for labels, colour, style, who in sources:
            mask = class_mask(labels, index_c, membership).T.astype(float)
            # contour() warns on a constant field; an absent class on this slice simply draws nothing.
            if 0.0 < mask.mean() < 1.0:
                ax.contour(x, y, mask, levels=[0.5], colors=[colour], linestyles=style, linewidths=1.6)
                drawn = True
            if paired:
                handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=1.6, label=f"{who} {name}"))
        if paired:
            handles[-1].set_label(f"{handles[-1].get_label()}{score}")
        elif drawn:
            # One entry per class in its colour; the two line styles are keyed once below.
            handles.append(Line2D([], [], color=c_gt, linewidth=3, label=f"{name}{score}"))
        else:
            not_here += 1
    if handles and paired:
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.7)
    elif not paired:
        keys = [
            Line2D([], [], color="k", linestyle="solid", linewidth=1.6, label="ground truth"),
            Line2D([], [], color="k", linestyle="dashed", linewidth=1.6, label="prediction"),
        ]
        if not_here:
            keys.append(Line2D([], [], linestyle="none", label=f"{not_here} more classes not on this slice"))
        # Beside the image, in columns of at most 30 entries: many classes would cover the slice.
        entries = keys + handles
        ax.legend(
            handles=entries,
            loc="upper left",
            bbox_to_anchor=(1.02, 1.0),
            fontsize=7,
            ncol=max(1, -(-len(entries) // 30)),
            frameon=False,
        )
    ax.set_title(f"{title or case_id}\n{where}", fontsize=9)
    ax.set_xlabel("mm")
    ax.set_ylabel("mm")

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path
