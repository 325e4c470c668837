"""Whole-volume prediction slab by slab, so memory follows the batch, not the scan.

A slab is ``settings.batch_size`` consecutive slices along the slice axis. :func:`iter_probability_slabs` yields
each slab's class probabilities in volume layout; a consumer keeps only what it needs:

* :func:`predict_volume_labels` turns every slab into uint8 labels at once (the probabilities of one slab live
  at a time: a 512 x 512 x 400 CT needs a 105 MB label volume instead of an 840 MB float32 probability volume
  per class pair);
* :func:`medseg.inference.forward.predict_volume_probs` stacks them when the probabilities are wanted
  (``save_probabilities``);
* ``slab_transform`` lets a step that works in the slice plane (re-sampling probabilities from the model's
  spacing back onto the scan's in-plane grid) run per slab, before the argmax, without a whole probability
  volume.

Slabs reuse :func:`~medseg.inference.forward.forward_slices`, so labels are exactly those of
``probs_to_labels(predict_volume_probs(...))`` for the same batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from torch import nn

from medseg.data.slicing import slices_to_volume, volume_to_slices
from medseg.inference.forward import forward_slices
from medseg.inference.settings import InferenceSettings
from medseg.models.head import probs_to_labels


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
        idx: list[slice] = [slice(None)] * (leading + 3)
        idx[leading + self.axis] = slice(self.start, self.stop)
        return tuple(idx)


def _check(image: np.ndarray, axis: int) -> None:
    if image.ndim != 3:
        raise ValueError(f"image must be (I, J, K), got shape {image.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")


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
    _check(image, axis)
    n = image.shape[axis]
    chunk = settings.batch_size
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        lo, hi = max(0, start - context), min(n, stop + context)
        sub = np.take(image, np.arange(lo, hi), axis=axis)
        slices = volume_to_slices(sub, axis, context)[start - lo : start - lo + (stop - start)]
        probs = forward_slices(model, slices, settings)
        yield Slab(start, stop, axis, slices_to_volume(probs, axis))


def predict_volume_labels(
    model: nn.Module,
    image: np.ndarray,
    axis: int,
    context: int,
    settings: InferenceSettings,
    *,
    slab_transform: Callable[[Slab], np.ndarray] | None = None,
    on_slab: Callable[[Slab, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Label volume of ``image``, with one slab's probabilities in memory at a time.

    Args:
        model, image, axis, context, settings: See :func:`iter_probability_slabs`.
        slab_transform: Maps a slab to the probabilities to take the argmax of (same layout, channels first,
            e.g. re-sampled in the slice plane); ``None`` = the slab's own probabilities.
        on_slab: Called with each slab and the probabilities its labels were taken of (after
            ``slab_transform``), e.g. to keep per-voxel confidence for QC (``Slab.index(leading=0)`` places them).

    Returns:
        ``(I, J, K)`` uint8 labels (uint16 beyond 256 classes) in the image's voxel grid, or in the grid the
        ``slab_transform`` maps to (its in-plane shape; the slice axis is not re-sampled).
    """
    _check(image, axis)
    dtype = np.uint8 if settings.n_classes <= 256 else np.uint16
    labels: np.ndarray | None = None
    for slab in iter_probability_slabs(model, image, axis, context, settings):
        probs = slab.probs if slab_transform is None else slab_transform(slab)
        slab_labels = probs_to_labels(probs, settings.mode, channel_dim=0)
        if on_slab is not None:
            on_slab(slab, probs)
        if labels is None:
            shape = list(slab_labels.shape)
            shape[axis] = image.shape[axis]
            labels = np.empty(shape, dtype=dtype)
        labels[slab.index(leading=0)] = slab_labels
    if labels is None:  # no slices along the axis
        return np.zeros(image.shape, dtype=dtype)
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
