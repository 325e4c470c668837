"""Whole-volume prediction slab by slab, so memory follows the batch, not the scan.

A slab is ``settings.batch_size`` consecutive slices along the slice axis. :func:`iter_probability_slabs` yields
each slab's class probabilities in volume layout; a consumer keeps only what it needs:

* :func:`predict_volume_labels` turns every slab into uint8 labels at once (the probabilities of one batch live
  at a time: a 512 x 512 x 400 CT needs a 105 MB label volume instead of an 840 MB float32 probability volume
  per class pair). It keeps the probabilities as torch tensors in slice layout
  (:func:`~medseg.inference.forward.iter_batch_probs`), and its ``transform`` lets a step that works in the slice
  plane (re-sampling probabilities from the model's spacing back onto the scan's in-plane grid) run before the
  labels are taken, without a whole probability volume;
* :func:`medseg.inference.forward.predict_volume_probs` stacks them when the probabilities are wanted
  (``save_probabilities``).

:func:`predict_volume_labels` also takes several :class:`View` s of one scan (test-time scales: the scan
re-sampled to other in-plane spacings, ``inference.tta_scales``). They share the slice axis, which is never
re-sampled, so slab ``start:stop`` is the same slices in every view: each view's probabilities are mapped onto the
output grid by its ``transform`` and averaged there, one slab at a time, before the labels are taken.

Both run the same forward loop, so labels are exactly those of ``probs_to_labels(predict_volume_probs(...))`` for
the same batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medseg.data.slicing import slices_to_volume, volume_to_slices
from medseg.inference.forward import forward_slices, iter_batch_probs
from medseg.inference.settings import InferenceSettings
from medseg.models.head import probs_to_labels

#: Slices whose probabilities go through the label path's tail (transform, labels, ``on_probs``) at once: bounds
#: the float32 temporaries of re-sampling to a few hundred MB on 512 x 512 CT (as ``medseg.data.resample`` does).
TAIL_SLICES = 32


@dataclass(frozen=True)
class Slab:
    """Probabilities of slices ``start:stop`` along ``axis``.

    Attributes:
        start, stop: Slice range along ``axis``.
        axis: The slice axis (0, 1 or 2) of the volume.
        probs: ``(n_classes, I, J, K)`` with the ``axis`` extent cut to ``stop - start`` (a view; copy to keep).
    """

    start: int
    stop: int
    axis: int
    probs: np.ndarray

    def index(self, leading: int = 1) -> tuple[slice, ...]:
        """Index of this slab in a volume with ``leading`` axes before ``(I, J, K)`` (1 for probabilities)."""
        return (slice(None),) * leading + slab_index(self.axis, self.start, self.stop)


def _check(image: np.ndarray, axis: int) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must be (I, J, K), got shape {image.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")


def _cut_slab(image: np.ndarray, axis: int, context: int, start: int, stop: int) -> np.ndarray:
    """Slices ``start:stop`` along ``axis`` as ``(stop - start, 2k+1, H, W)``, cut with their true neighbours."""
    n = image.shape[axis]
    lo, hi = max(0, start - context), min(n, stop + context)
    sub = np.take(image, np.arange(lo, hi), axis=axis)
    return volume_to_slices(sub, axis, context)[start - lo : start - lo + (stop - start)]


def _slab_slices(image: np.ndarray, axis: int, context: int, size: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(start, stop, slices)`` for consecutive slabs of ``size`` slices, each cut with its true neighbours."""
    _check(image, axis)
    n = image.shape[axis]
    for start in range(0, n, size):
        stop = min(n, start + size)
        yield start, stop, _cut_slab(image, axis, context, start, stop)


def iter_probability_slabs(
    model: nn.Module, image: np.ndarray, axis: int, context: int, settings: InferenceSettings
) -> Iterator[Slab]:
    """Yields the class probabilities of ``image`` one slab of ``settings.batch_size`` slices at a time.

    Each slab is cut with ``context`` neighbours on each side, so 2.5D channels at slab borders are the true
    neighbours and only the volume's own edges are replicated (as :func:`volume_to_slices` does).

    Args:
        model: See :func:`~medseg.inference.forward.forward_slices`.
        image: ``(I, J, K)`` normalised float32 volume.
        axis: Slice axis (0, 1 or 2) the model was trained on.
        context: Neighbouring slices on each side given as extra channels.
        settings: The forward pass; ``batch_size`` is also the slab size.

    Raises:
        ValueError: If ``image`` is not 3D or ``axis`` is not 0, 1 or 2.
    """
    for start, stop, slices in _slab_slices(image, axis, context, settings.batch_size):
        probs = forward_slices(model, slices, settings)
        yield Slab(start, stop, axis, slices_to_volume(probs, axis))


def slab_index(axis: int, start: int, stop: int) -> tuple[slice, ...]:
    """Index of slices ``start:stop`` along ``axis`` in an ``(I, J, K)`` volume."""
    idx = [slice(None)] * 3
    idx[axis] = slice(start, stop)
    return tuple(idx)


@dataclass(frozen=True)
class View:
    """One version of a scan for :func:`predict_volume_labels`: the volume the model sees, and the way back.

    Attributes:
        image: ``(I, J, K)`` normalised float32 volume.
        transform: Maps ``(b, n_classes, H, W)`` probabilities of ``b`` consecutive slices of ``image`` to the
            output grid, ``(b, n_classes, H', W')`` (e.g. re-sampled onto the scan's in-plane grid); ``None`` =
            the probabilities themselves.
    """

    image: np.ndarray
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None


def _view_slab_probs(
    model: nn.Module, view: View, axis: int, context: int, settings: InferenceSettings, start: int, stop: int
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first, probs)``: probabilities of slices ``first:first + len(probs)`` of ``start:stop`` on the output
    grid, at most :data:`TAIL_SLICES` at a time."""
    slices = _cut_slab(view.image, axis, context, start, stop)
    for batch_start, batch_probs in iter_batch_probs(model, slices, settings):
        for offset in range(0, batch_probs.shape[0], TAIL_SLICES):
            probs = batch_probs[offset : offset + TAIL_SLICES]
            yield start + batch_start + offset, probs if view.transform is None else view.transform(probs)


def _averaged_probs(
    model: nn.Module, views: Sequence[View], axis: int, context: int, settings: InferenceSettings
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first, probs)`` over the whole slice axis: each view's probabilities on the output grid, averaged."""
    n = views[0].image.shape[axis]
    for start in range(0, n, settings.batch_size):
        stop = min(n, start + settings.batch_size)
        if len(views) == 1:  # nothing to average: each piece goes on as it comes, no slab-sized buffer
            yield from _view_slab_probs(model, views[0], axis, context, settings, start, stop)
            continue
        total: torch.Tensor | None = None
        # The sum is made in inference mode, as the probabilities are (in-place updates must stay inside it).
        with torch.inference_mode():
            for view in views:
                for first, probs in _view_slab_probs(model, view, axis, context, settings, start, stop):
                    if total is None:
                        total = torch.zeros((stop - start, *probs.shape[1:]), dtype=torch.float32)
                    if tuple(probs.shape[1:]) != tuple(total.shape[1:]):
                        raise ValueError(
                            f"views map onto different grids: {tuple(total.shape[2:])} and {tuple(probs.shape[2:])}"
                        )
                    total[first - start : first - start + probs.shape[0]] += probs
            assert total is not None
            total /= len(views)
        for offset in range(0, stop - start, TAIL_SLICES):
            yield start + offset, total[offset : offset + TAIL_SLICES]


def predict_volume_labels(
    model: nn.Module,
    image: np.ndarray | Sequence[View],
    axis: int,
    context: int,
    settings: InferenceSettings,
    *,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_probs: Callable[[tuple[slice, ...], torch.Tensor, torch.Tensor], None] | None = None,
) -> np.ndarray:
    """Label volume of ``image``, with one batch's probabilities in memory at a time.

    The probabilities stay torch tensors in slice layout from the model to the labels: ``transform``, the labels
    and ``on_probs`` run on at most :data:`TAIL_SLICES` slices at a time, with no numpy copy of the probabilities
    and no change of layout (on LA2018-sized scans the numpy path spent more time copying and reducing the
    probabilities than the whole rest of the pipeline but the model and the file reading).

    Args:
        model, axis, context, settings: See :func:`iter_probability_slabs`.
        image: ``(I, J, K)`` normalised float32 volume, or several :class:`View` s of one scan (the same number of
            slices along ``axis``, each with its own ``transform`` onto one output grid): their probabilities are
            averaged on that grid, one slab of ``settings.batch_size`` slices at a time, before the labels are
            taken (test-time scales).
        transform: With a single ``image``: maps ``(b, n_classes, H, W)`` probabilities of ``b`` consecutive
            slices to the probabilities to take the labels of, ``(b, n_classes, H', W')`` (e.g. re-sampled onto
            the scan's in-plane grid); ``None`` = the probabilities themselves.
        on_probs: Called with the volume index of those slices (:func:`slab_index`, in the output's grid), the
            ``(b, n_classes, H, W)`` probabilities their labels were taken of (after ``transform`` and averaging)
            and those ``(b, H, W)`` labels, e.g. to keep per-voxel confidence for QC.

    Returns:
        ``(I, J, K)`` uint8 labels (uint16 beyond 256 classes) in the image's voxel grid, or in the grid
        ``transform`` maps to (its in-plane shape; the slice axis is not re-sampled). For a single ``image``,
        the same labels as ``probs_to_labels`` of :func:`~medseg.inference.forward.predict_volume_probs` for the
        same batch size.

    Raises:
        ValueError: A volume is not 3D, ``axis`` is not 0, 1 or 2, no view is given, the views differ in their
            number of slices, or ``transform`` is given beside views.
    """
    if isinstance(image, np.ndarray):
        views: list[View] = [View(image, transform)]
    else:
        views = list(image)
        if transform is not None:
            raise ValueError("transform belongs to each View when views are given")
        if not views:
            raise ValueError("no view to predict")
    for view in views:
        _check(view.image, axis)
    n = views[0].image.shape[axis]
    if any(view.image.shape[axis] != n for view in views):
        raise ValueError(f"views differ in their number of slices along axis {axis}: {[v.image.shape for v in views]}")
    dtype = np.uint8 if settings.n_classes <= 256 else np.uint16
    labels: np.ndarray | None = None
    for start, probs in _averaged_probs(model, views, axis, context, settings):
        index = slab_index(axis, start, start + probs.shape[0])
        if labels is None:
            shape = [int(probs.shape[2]), int(probs.shape[3])]
            shape.insert(axis, n)
            labels = np.empty(shape, dtype=dtype)
        slice_labels = probs_to_labels(probs, settings.mode, channel_dim=1)
        if dtype == np.uint8:
            slice_labels = slice_labels.to(torch.uint8)  # a smaller array to place; int64 is cast there
        labels[index] = np.moveaxis(slice_labels.numpy(), 0, axis)
        if on_probs is not None:
            on_probs(index, probs, slice_labels)
    if labels is None:  # no slices along the axis
        return np.zeros(views[0].image.shape, dtype=dtype)
    return labels


def forward_labels(model: nn.Module, slices: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """Labels ``(N, H, W)`` uint8 for a stack of slices ``(N, C, H, W)``, probabilities held per batch only.

    The label-only counterpart of :func:`~medseg.inference.forward.forward_slices` (used by the trainer's
    validation, which needs labels, not a whole case's float32 probabilities).
    """
    if slices.ndim != 4:
        raise ValueError(f"slices must be (N, C, H, W), got shape {slices.shape}")
    dtype = np.uint8 if settings.n_classes <= 256 else np.uint16
    out = np.empty((slices.shape[0], *slices.shape[2:]), dtype=dtype)
    step = settings.batch_size
    for start in range(0, slices.shape[0], step):
        probs = forward_slices(model, slices[start : start + step], settings)
        out[start : start + len(probs)] = probs_to_labels(probs, settings.mode, channel_dim=1)
    return out
