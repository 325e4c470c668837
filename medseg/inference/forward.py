"""Batched 2D forward passes over slices, and over whole volumes slice by slice.

Shared by the trainer (validation) and the predictor, so validation Dice is measured with exactly the code that
later writes masks. Slices are padded the way training pads them (``medseg.data.slicing.pad_to_shape``: centred,
zeros) to a multiple of the network's down-sampling factor and at least the training patch, then unpadded
exactly, so probabilities always line up with the input voxels.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from medseg.data.slicing import pad_to_shape, padded_size, unpad
from medseg.inference.precision import autocast
from medseg.inference.settings import InferenceSettings
from medseg.models.head import logits_to_probs

#: Test-time flips of the slice axes (H = dim 2, W = dim 3 of an NCHW tensor). The set is a group (every element
#: is its own inverse and the set is closed), so the averaged prediction is exactly flip-equivariant.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (2,), (3,), (2, 3))


def _is_channels_last(model: nn.Module) -> bool:
    """Whether ``model``'s weights are in channels_last, told by its first weight whose layout the format changes.

    ``model.to(memory_format=...)`` converts every weight at once, so one weight tells; a kernel with one input
    channel or a 1 x 1 kernel is contiguous in both formats and cannot. Checking every weight walked all the
    modules on each call: 0.9 ms a scan in batch prediction (1 % of a hippocampus scan's forward pass).
    """
    for p in model.parameters():
        if p.ndim == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1:
            return p.is_contiguous(memory_format=torch.channels_last)
    return True  # no weight whose layout the format changes


def iter_batch_probs(
    model: nn.Module, slices: np.ndarray, settings: InferenceSettings
) -> Iterator[tuple[int, torch.Tensor]]:
    """Class probabilities of a stack of 2D slices, one forward batch at a time, as CPU tensors.

    The loop both :func:`forward_slices` (numpy, for callers that keep probabilities) and the label path
    (``medseg.inference.slabs.predict_volume_labels``, which takes labels and QC maps in torch without a numpy
    copy of the probabilities) run on. The model must already be on ``device``. It is put in eval mode for the
    iteration and its previous mode restored when the iteration ends, so the trainer can validate mid-training.
    With ``channels_last`` the model is converted in place (a no-op when it already is).

    Args:
        model: A network mapping ``(B, C, H, W)`` to logits ``(B, n_outputs, H, W)``.
        slices: ``(N, C, H, W)`` float32 normalised slices (C = 2 * context + 1).
        settings: Classes, mode, device, precision, memory format, padding, batch size and test-time flips.

    Yields:
        ``(start, probs)``: slices ``start:start + len(probs)`` and their ``(b, n_classes, H, W)`` float32
        probabilities on the CPU, unpadded to the input's H, W (a view of the padded batch; valid until the next
        step of the iteration).

    Raises:
        ValueError: If ``slices`` is not 4D, or the model's outputs do not make ``n_classes`` classes.
    """
    if slices.ndim != 4:
        raise ValueError(f"slices must be (N, C, H, W), got shape {slices.shape}")
    s = settings
    n_classes, mode, batch_size, device, precision = s.n_classes, s.mode, s.batch_size, s.device, s.precision
    channels_last = s.channels_last
    n, _, h, w = slices.shape
    if n == 0:
        return
    target = padded_size((h, w), s.pad_multiple, s.patch_hw)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    # .to() and .eval() walk every submodule (a few ms per call on a UNet, paid per scan in batch prediction):
    # skip them when the model is already in the wanted state.
    if channels_last and not _is_channels_last(model):
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    was_training = model.training
    if was_training:
        model.eval()
    flips = TTA_FLIPS if s.tta_flips else ((),)
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                batch = np.ascontiguousarray(slices[start : start + batch_size], dtype=np.float32)
                padded, padding = pad_to_shape(batch, target)
                x = torch.from_numpy(np.ascontiguousarray(padded))
                if device.type == "cuda":
                    x = x.pin_memory()
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                probs: torch.Tensor | None = None
                for dims in flips:
                    xi = torch.flip(x, dims) if dims else x
                    with autocast(device, precision):
                        logits = model(xi)
                    # Probabilities in float32 whatever the autocast dtype: sigmoid/softmax of bf16 logits loses
                    # the precision that decides voxels near 0.5.
                    p = logits_to_probs(logits.float(), mode)
                    if p.shape[1] != n_classes:
                        raise ValueError(
                            f"model gives {logits.shape[1]} output channel(s), which in {mode} mode make "
                            f"{p.shape[1]} classes, but n_classes={n_classes}"
                        )
                    if dims:
                        p = torch.flip(p, dims)
                    probs = p if probs is None else probs + p
                assert probs is not None
                if len(flips) > 1:
                    probs = probs / len(flips)
                probs_cpu = probs.to("cpu", torch.float32)
                yield start, unpad(probs_cpu, padding)  # type: ignore[misc]
    finally:
        if was_training:
            model.train(True)


def forward_slices(model: nn.Module, slices: np.ndarray, settings: InferenceSettings) -> np.ndarray:
    """Class probabilities for a stack of 2D slices (:func:`iter_batch_probs` gathered into one array).

    Args:
        model, slices, settings: See :func:`iter_batch_probs`.

    Returns:
        ``(N, n_classes, H, W)`` float32 probabilities, unpadded to the input's H, W.

    Raises:
        ValueError: If ``slices`` is not 4D.
    """
    if slices.ndim != 4:
        raise ValueError(f"slices must be (N, C, H, W), got shape {slices.shape}")
    n, _, h, w = slices.shape
    out = np.empty((n, settings.n_classes, h, w), dtype=np.float32)
    for start, probs in iter_batch_probs(model, slices, settings):
        out[start : start + probs.shape[0]] = probs.numpy()
    return out


def predict_volume_probs(
    model: nn.Module, image: np.ndarray, axis: int, context: int, settings: InferenceSettings
) -> np.ndarray:
    """Class probabilities for a whole normalised volume, predicted slice by slice along ``axis``.

    Slices are cut in chunks (a chunk plus ``context`` neighbours on each side, so 2.5D channels at chunk
    borders are the true neighbours and only the volume's own edges are replicated), which keeps memory at one
    float32 probability volume plus one chunk rather than a full ``(N, 2k+1, H, W)`` copy of the scan.

    Args:
        model: See :func:`forward_slices`.
        image: ``(I, J, K)`` normalised float32 volume.
        axis: Slice axis (0, 1 or 2) the model was trained on.
        context: Neighbouring slices on each side given as extra channels (the model's ``n_channels = 2k+1``).
        settings: See :func:`forward_slices`.

    Returns:
        ``(n_classes, I, J, K)`` float32 probabilities on the image's voxel grid.

    Raises:
        ValueError: If ``image`` is not 3D or ``axis`` is not 0, 1 or 2.
    """
    # Imported here: slabs builds on forward_slices above (one slab loop for probabilities and labels).
    from medseg.inference.slabs import iter_probability_slabs

    out: np.ndarray | None = None
    for slab in iter_probability_slabs(model, image, axis, context, settings):
        if out is None:
            out = np.empty((settings.n_classes, *image.shape), dtype=np.float32)
        out[slab.index()] = slab.probs
    return out if out is not None else np.empty((settings.n_classes, *image.shape), dtype=np.float32)
