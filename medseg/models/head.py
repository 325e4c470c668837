"""The output head: how many logit channels a loss mode needs, and logits -> probabilities -> labels.

Three modes (``loss.mode``; the third is chosen by ``data.regions``):

- ``"sigmoid"``: one logit channel per foreground class (``n_classes - 1``), an independent sigmoid each;
  background is "no foreground channel fires".
- ``"softmax"``: ``n_classes`` channels incl. background, a softmax over them.
- ``"regions"``: overlapping regions (``medseg.data.regions``), one sigmoid each as in ``"sigmoid"``, whose
  labels are *painted*: a voxel takes the last region (in class order) whose probability is > 0.5.

Every architecture ends in this head, so the trainer (loss, validation) and the predictor turn logits into
masks with the same three functions, whatever the network in front of them.
"""

from __future__ import annotations

from typing import Literal, TypeVar, overload

import numpy as np
import torch

from medseg.errors import ConfigError

LossMode = Literal["sigmoid", "softmax", "regions"]
MODES: tuple[str, ...] = ("sigmoid", "softmax", "regions")

_Array = TypeVar("_Array", torch.Tensor, np.ndarray)


def check_mode(mode: str) -> None:
    """Raises :class:`ConfigError` unless ``mode`` is ``"sigmoid"``, ``"softmax"`` or ``"regions"``."""
    if mode not in MODES:
        raise ConfigError(f"loss.mode: expected one of {', '.join(MODES)}, got {mode!r}")


LossModeOption = Literal["auto", "sigmoid", "softmax"]

SIGMOID_UP_TO = 4
"""``loss.mode: auto`` takes sigmoid for at most this many foreground classes, softmax for more."""


def resolve_mode(option: str, n_classes: int, regions: bool = False) -> tuple[LossMode, str]:
    """The loss mode ``loss.mode`` asks for, with ``auto`` decided from the number of classes, and why.

    ``auto``: sigmoid up to :data:`SIGMOID_UP_TO` foreground classes (the seed's head, with which medseg's
    hippocampus and LA2018 figures were measured), softmax for more. A label map's classes exclude each other,
    which softmax builds in and independent sigmoids have to learn; with many structures they learn it too slowly.
    Measured (``benchmarks/loss_mode.py``, the k largest TotalSegmentator CT structures, 40 epochs, held-out
    mean Dice sigmoid / softmax): k = 4: 0.978 / 0.976; 10: 0.949 / 0.965; 20: 0.709 / 0.951; 41: 0.554 /
    0.783. On the hippocampus (2 classes, fold 0, 10 minutes) 0.872 / 0.870.

    Args:
        option: ``auto``, ``sigmoid`` or ``softmax``.
        n_classes: Number of classes including background.
        regions: The classes are overlapping regions (``data.regions``): ``"regions"``, which only ``auto`` gives.

    Raises:
        ConfigError: Unknown option, or ``sigmoid`` / ``softmax`` with regions.
    """
    if regions:
        if option != "auto":
            raise ConfigError(
                f"loss.mode: {option} cannot train overlapping regions (data.regions or dataset.json), which take one "
                "sigmoid each and are painted in order; set loss.mode: auto"
            )
        return "regions", f"{n_classes - 1} overlapping regions: a sigmoid output each, painted in order"
    if option != "auto":
        check_mode(option)
        return option, "set in the config (loss.mode)"  # type: ignore[return-value]
    n_fg = n_classes - 1
    if n_fg == 1:
        return "sigmoid", "one foreground class: one sigmoid output (loss.mode: auto)"
    if n_fg <= SIGMOID_UP_TO:
        return "sigmoid", f"{n_fg} classes (up to {SIGMOID_UP_TO}): a sigmoid output each (loss.mode: auto)"
    return "softmax", f"{n_fg} classes that exclude each other: softmax over them (loss.mode: auto)"


def n_outputs(mode: str, n_classes: int) -> int:
    """Number of logit channels the model needs.

    Args:
        mode: ``"sigmoid"``, ``"softmax"`` or ``"regions"``.
        n_classes: Number of classes including background (at least 2).

    Returns:
        ``n_classes - 1`` for sigmoid and regions (one channel per foreground class or region), ``n_classes`` for
        softmax.

    Raises:
        ConfigError: Unknown mode or fewer than 2 classes.
    """
    check_mode(mode)
    if n_classes < 2:
        raise ConfigError(f"data.classes: need background and at least one foreground class, got {n_classes}")
    return n_classes if mode == "softmax" else n_classes - 1


#: Softmax models with at least this many classes take the softmax over the innermost axis of channels_last logits.
SOFTMAX_LAST_DIM_FROM = 16


def _channels_innermost(t: torch.Tensor) -> bool:
    """A 4D tensor stored channels_last (and not also plain contiguous, as a 1 x 1 image would be)."""
    return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def logits_to_probs(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """Turn model logits into one probability map per class, background included.

    Args:
        logits: ``(B, n_outputs, ...)`` model output.
        mode: ``"sigmoid"``, ``"softmax"`` or ``"regions"``.

    Returns:
        ``(B, n_classes, ...)`` float32. Softmax: the softmax. Sigmoid and regions: channels ``1..`` are the
        per-class (per-region) sigmoids and channel 0 is ``1 - max`` of them, so that for sigmoid
        :func:`probs_to_labels` and a plain argmax agree (up to ties) and the background map reads as
        "probability that no class fires".
    """
    check_mode(mode)
    logits = logits.float()
    if mode == "softmax":
        if _channels_innermost(logits) and logits.shape[1] >= SOFTMAX_LAST_DIM_FROM:
            # channels_last logits hold the classes innermost: a softmax over the last axis of the NHWC view is
            # torch's vectorised path. For (1, 118, 512, 512) it takes 47 ms against 164 ms over dim 1 (the same
            # values within 3e-7); below 16 classes it is the slower one (6 classes: 14 ms against 3 ms).
            return torch.softmax(logits.permute(0, 2, 3, 1), dim=-1).permute(0, 3, 1, 2)
        return torch.softmax(logits, dim=1)
    fg = torch.sigmoid(logits)
    return torch.cat([1.0 - fg.amax(dim=1, keepdim=True), fg], dim=1)


@overload
def probs_to_labels(probs: torch.Tensor, mode: str, *, channel_dim: int = 1) -> torch.Tensor: ...
@overload
def probs_to_labels(probs: np.ndarray, mode: str, *, channel_dim: int = 1) -> np.ndarray: ...
def probs_to_labels(probs: _Array, mode: str, *, channel_dim: int = 1) -> _Array:
    """Turn per-class probabilities (from :func:`logits_to_probs`, possibly averaged) into a label map.

    Args:
        probs: Probabilities with the ``n_classes`` channels (background first) on ``channel_dim``: e.g.
            ``(B, n_classes, H, W)`` with ``channel_dim=1`` or a volume ``(n_classes, I, J, K)`` with
            ``channel_dim=0``. A tensor or a numpy array.
        mode: ``"sigmoid"``: the most probable foreground class where its probability is > 0.5, else 0
            (the background channel is ignored, so averaged probabilities, e.g. from test-time flips, are
            thresholded consistently). ``"softmax"``: the argmax over all channels. ``"regions"``: the last
            region whose probability is > 0.5, else 0 (nnU-Net's painting in ``regions_class_order``).
        channel_dim: The class axis.

    Returns:
        Labels with the class axis removed: a long tensor for a tensor, an int64 array for an array.
    """
    check_mode(mode)
    as_numpy = isinstance(probs, np.ndarray)
    p = torch.from_numpy(probs) if isinstance(probs, np.ndarray) else probs
    if mode == "softmax":
        # max(dim).indices, not argmax: the same first-maximum index (and NaN handling), but torch's CPU argmax
        # over a short class axis is 7-20x slower (pytorch/pytorch#140000; 340 ms against 50 ms for a 64-slice
        # slab of 5 classes at 240 x 240 with torch 2.13), which made it a fifth of a BraTS prediction.
        labels = p.max(dim=channel_dim).indices
    elif mode == "regions":
        # Painted in class order: each region over the ones before it, so a voxel ends as the innermost region.
        labels = torch.zeros_like(p.select(channel_dim, 0), dtype=torch.long)
        for r in range(1, p.shape[channel_dim]):
            labels.masked_fill_(p.select(channel_dim, r) > 0.5, r)
    else:
        best, idx = p.narrow(channel_dim, 1, p.shape[channel_dim] - 1).max(dim=channel_dim)
        labels = torch.where(best > 0.5, idx + 1, torch.zeros_like(idx))
    return labels.numpy() if as_numpy else labels  # type: ignore[return-value]
