"""Volumes to 2D slices and back, and the padding that makes slices fit the UNet.

A volume ``(I, J, K)`` sliced along ``axis`` gives ``N = shape[axis]`` slices whose two in-plane axes keep their
volume order: axis 2 -> slices ``(K, I, J)``, axis 1 -> ``(J, I, K)``, axis 0 -> ``(I, J, K)``.
:func:`slices_to_volume` is the exact inverse. With ``context = k`` (2.5D) slice ``n`` gets channels
``n-k .. n+k``; neighbours beyond the volume's ends replicate the edge slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F


def resolve_slice_axis(spacing: Sequence[float] | np.ndarray, axis_cfg: Literal["auto", 0, 1, 2] | int) -> int:
    """The axis to slice along.

    Args:
        spacing: Voxel size (mm) along i, j, k (for a dataset: e.g. the median over cases).
        axis_cfg: ``0``, ``1``, ``2``, or ``auto`` = the axis with the largest spacing (the through-plane axis
            of anisotropic scans); ties (within 0.1 %) go to the last axis.

    Returns:
        0, 1 or 2.

    Raises:
        ValueError: For another value of ``axis_cfg`` or a spacing that is not 3 positive numbers.
    """
    if axis_cfg != "auto":
        if axis_cfg not in (0, 1, 2):
            raise ValueError(f"slice axis must be 'auto', 0, 1 or 2, got {axis_cfg!r}")
        return int(axis_cfg)
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or not np.all(sp > 0):
        raise ValueError(f"spacing must be 3 positive numbers, got {spacing!r}")
    # Tolerance: spacings from affine column norms carry float noise (1.0 vs 0.99999994).
    return int(np.flatnonzero(sp >= sp.max() * (1 - 1e-3))[-1])


def _check_axis(ndim: int, axis: int) -> None:
    if ndim != 3:
        raise ValueError(f"expected a 3D volume (I, J, K), got {ndim} dimensions")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")


def context_indices(n_slices: int, context: int) -> np.ndarray:
    """``(N, 2k+1)`` indices of each slice's neighbours ``n-k .. n+k``, clamped to the volume (edge replicate)."""
    offsets = np.arange(-context, context + 1)
    return np.clip(np.arange(n_slices)[:, None] + offsets[None, :], 0, n_slices - 1)


def volume_to_slices(array: np.ndarray, axis: int, context: int = 0) -> np.ndarray:
    """Cuts a volume into 2D slices with optional neighbour channels.

    Args:
        array: Volume ``(I, J, K)``.
        axis: Slice axis.
        context: ``k`` neighbours on each side become extra channels (2.5D).

    Returns:
        Contiguous float32 ``(N, 2k+1, H, W)``; channel ``k`` is the slice itself.
    """
    array = np.asarray(array)
    _check_axis(array.ndim, axis)
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    moved = np.moveaxis(array, axis, 0)
    if context == 0:
        return np.ascontiguousarray(moved[:, None], dtype=np.float32)
    return np.ascontiguousarray(moved[context_indices(moved.shape[0], context)], dtype=np.float32)


def channels_to_slices(array: np.ndarray, axis: int, context: int = 0) -> np.ndarray:
    """Cuts a multi-channel volume ``(C, I, J, K)`` (or ``(I, J, K)``) into ``(N, C * (2k+1), H, W)`` slices.

    Channel-major: input channels ``c * (2k+1) .. c * (2k+1) + 2k`` are channel ``c``'s neighbours ``n-k .. n+k``.
    A 3D volume gives exactly :func:`volume_to_slices`.
    """
    array = np.asarray(array)
    if array.ndim == 3:
        return volume_to_slices(array, axis, context)
    if array.ndim != 4:
        raise ValueError(f"expected (C, I, J, K) or (I, J, K), got shape {array.shape}")
    return np.concatenate([volume_to_slices(array[c], axis, context) for c in range(array.shape[0])], axis=1)


def label_to_slices(label: np.ndarray, axis: int) -> np.ndarray:
    """Cuts a label volume ``(I, J, K)`` into contiguous ``(N, H, W)`` slices, keeping its dtype."""
    label = np.asarray(label)
    _check_axis(label.ndim, axis)
    return np.ascontiguousarray(np.moveaxis(label, axis, 0))


def slices_to_volume(slices: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`volume_to_slices` / :func:`label_to_slices`.

    Args:
        slices: ``(N, ..., H, W)``: slices first, any channel dims, then the in-plane axes (e.g. probabilities
            ``(N, n_classes, H, W)``).
        axis: The axis they were cut along.

    Returns:
        ``(..., I, J, K)``: channel dims first. A view of ``slices`` (use ``np.ascontiguousarray`` if needed).
    """
    slices = np.asarray(slices)
    if slices.ndim < 3:
        raise ValueError(f"slices must be (N, ..., H, W), got shape {slices.shape}")
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis!r}")
    stacked = np.moveaxis(slices, 0, -3)  # (..., N, H, W)
    return np.moveaxis(stacked, -3, stacked.ndim - 3 + axis)


@dataclass(frozen=True)
class Padding:
    """Zero padding added around the last two axes; :func:`unpad` removes exactly this.

    Attributes:
        top, bottom, left, right: Rows/columns added before/after H and W.
    """

    top: int
    bottom: int
    left: int
    right: int

    @property
    def is_zero(self) -> bool:
        """Whether nothing was padded."""
        return self.top == self.bottom == self.left == self.right == 0


def padded_size(hw: Sequence[int], multiple: int, minimum: Sequence[int] | None = None) -> tuple[int, int]:
    """The smallest ``(H', W')`` >= ``hw`` (and >= ``minimum``) that are multiples of ``multiple``.

    Four poolings need a multiple of 16; ``minimum`` is e.g. the training patch size.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    lo = minimum if minimum is not None else (0, 0)
    h, w = (max(int(a), int(b)) for a, b in zip(hw, lo, strict=True))
    return (math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple)


def pad_to_shape(arr: np.ndarray | torch.Tensor, target_hw: Sequence[int]) -> tuple[np.ndarray | torch.Tensor, Padding]:
    """Pads the last two axes to ``target_hw`` with zeros, centred (extra row/column at the end).

    Args:
        arr: ``(..., H, W)`` numpy array or torch tensor.
        target_hw: ``(H', W')`` with ``H' >= H`` and ``W' >= W``.

    Returns:
        The padded array (same type and dtype; the input itself if no padding is needed) and the
        :class:`Padding` to pass to :func:`unpad`.

    Raises:
        ValueError: If the target is smaller than the array.
    """
    h, w = int(arr.shape[-2]), int(arr.shape[-1])
    th, tw = int(target_hw[0]), int(target_hw[1])
    if th < h or tw < w:
        raise ValueError(f"cannot pad slices of size {(h, w)} to the smaller size {(th, tw)}")
    top, left = (th - h) // 2, (tw - w) // 2
    pad = Padding(top, th - h - top, left, tw - w - left)
    if pad.is_zero:
        return arr, pad
    if isinstance(arr, torch.Tensor):
        return F.pad(arr, (pad.left, pad.right, pad.top, pad.bottom)), pad
    widths = [(0, 0)] * (arr.ndim - 2) + [(pad.top, pad.bottom), (pad.left, pad.right)]
    return np.pad(arr, widths), pad


def unpad(arr: np.ndarray | torch.Tensor, padding: Padding) -> np.ndarray | torch.Tensor:
    """Removes the padding :func:`pad_to_shape` added (a view, no copy)."""
    h, w = int(arr.shape[-2]), int(arr.shape[-1])
    return arr[..., padding.top : h - padding.bottom, padding.left : w - padding.right]
