"""Class-weighted BCE (or cross-entropy) + soft Dice (the output head is ``medseg.models.head``).

``loss = bce_weight * BCE + dice_weight * (1 - soft Dice)``, in one of two modes:

- ``"sigmoid"`` (``loss.mode: auto`` up to 4 foreground classes): one logit channel per foreground class
  (``n_classes - 1``); the label is one-hot encoded over the foreground classes and each channel gets its own
  sigmoid, so classes are independent (background = no foreground channel fires). BCE-with-logits and soft Dice
  are computed per class channel.
- ``"softmax"``: ``n_classes`` channels incl. background; weighted cross-entropy + softmax soft Dice over the
  foreground classes only (background excluded, as in nnU-Net: its Dice is ~1 from the first epoch and would
  only dilute the signal from the small structures). ``auto`` takes it for more than 4 foreground classes
  (``medseg.models.head.resolve_mode``), where independent sigmoids learn far slower.
- ``"regions"`` (``data.regions``): as ``"sigmoid"``, one channel per region, but a region's target is every
  pixel whose painted class lies inside it (``membership``, ``medseg.data.regions``), so targets overlap.

Conventions (matching MONAI's ``DiceLoss``/``DiceCELoss`` so results are comparable; the tests check it):

- Soft Dice is a *batch* Dice (MONAI ``batch=True``): intersection and sums run over the batch and spatial dims
  before dividing, one Dice per class. A class absent from one slice then does not count as a failed slice,
  which keeps the loss stable on 2D slices where most structures are absent most of the time.
- ``smooth_nr = smooth_dr = 1e-5`` (MONAI's defaults): a class absent from the whole batch gives a finite loss
  and finite gradients, never NaN.
- Class weights enter both terms as a *weighted mean* over classes, ``sum_c w_c L_c / sum_c w_c``, so the loss
  scale does not depend on how the weights are normalised and equal weights give the unweighted loss. This is
  what ``torch.nn.CrossEntropyLoss(weight=...)`` does for cross-entropy; MONAI's Dice instead multiplies and then
  takes the plain mean, which is the same when the (foreground) weights average 1. In sigmoid mode only the
  foreground weights are used, so with a single foreground class they cancel out.
- Logits are cast to float32 first: under bf16/fp16 autocast, sums over a whole batch of pixels would lose
  the small classes.
- Unannotated pixels (``unannotated=True``: target ``n_classes``, ``medseg.data.unannotated``) are left out of
  both terms: BCE / cross-entropy average over annotated pixels only, and the Dice sums skip them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import ConfigError

# The output head lives with the models; re-exported here so imports written before the move keep working.
from medseg.models.head import MODES, LossMode, logits_to_probs, n_outputs, probs_to_labels

__all__ = ["MODES", "LossMode", "SegLoss", "logits_to_probs", "n_outputs", "probs_to_labels", "soft_dice_per_class"]

SMOOTH_NR = 1e-5
SMOOTH_DR = 1e-5


def soft_dice_per_class(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Batch soft Dice per class: ``(2 * sum(p t) + 1e-5) / (sum(p) + sum(t) + 1e-5)`` over batch and space.

    Args:
        probs: ``(B, C, ...)`` probabilities.
        target: ``(B, C, ...)`` one-hot (or soft) target.

    Returns:
        ``(C,)`` Dice per class, in [0, 1].
    """
    dims = [0, *range(2, probs.ndim)]
    intersection = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    return (2.0 * intersection + SMOOTH_NR) / (total + SMOOTH_DR)


class SegLoss(nn.Module):
    """``bce_weight * BCE + dice_weight * (1 - soft Dice)``, class-weighted (see the module docstring).

    Args:
        mode: ``"sigmoid"`` (one-hot over foreground classes, a sigmoid per class, BCE-with-logits),
            ``"softmax"`` (cross-entropy + softmax Dice over the foreground classes) or ``"regions"`` (a sigmoid per
            overlapping region, targets from ``membership``).
        n_classes: Number of classes including background.
        class_weights: ``(n_classes,)`` weights incl. background, or ``None`` for equal weights. Sigmoid uses
            ``w[1:]`` for both terms; softmax uses all of ``w`` for cross-entropy and ``w[1:]`` for Dice.
        bce_weight: Weight of the BCE (sigmoid) or cross-entropy (softmax) term.
        dice_weight: Weight of the ``1 - Dice`` term.
        unannotated: Targets may hold ``n_classes`` for unannotated pixels (``data.ignore_label``), which are left
            out of the loss; ``False`` keeps the loss free of the masking.
        membership: ``regions`` mode: ``(n_classes, n_classes)`` bool, entry ``[r, k]`` true when painted class
            ``k`` lies in region ``r`` (``Regions.membership``); required there, refused elsewhere.

    Raises:
        ConfigError: Unknown mode, fewer than 2 classes, weights of the wrong length, negative weights,
            foreground weights summing to 0, (softmax) a zero weight, or a missing or misshapen membership.
    """

    class_weights: torch.Tensor
    region_targets: torch.Tensor | None

    def __init__(
        self,
        mode: str = "sigmoid",
        n_classes: int = 2,
        class_weights: torch.Tensor | None = None,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        unannotated: bool = False,
        membership: torch.Tensor | np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.unannotated = bool(unannotated)
        self.n_outputs = n_outputs(mode, n_classes)
        self.mode = mode
        self.n_classes = n_classes
        self.bce_weight = float(bce_weight)
        self.dice_weight = float(dice_weight)
        if self.bce_weight < 0 or self.dice_weight < 0:
            raise ConfigError(f"loss.bce_weight/dice_weight: must be >= 0, got {bce_weight}, {dice_weight}")
        w = torch.ones(n_classes) if class_weights is None else torch.as_tensor(class_weights).detach().float()
        if w.shape != (n_classes,):
            raise ConfigError(
                f"loss.class_weights: expected {n_classes} values (one per class incl. background), "
                f"got shape {tuple(w.shape)}"
            )
        if not torch.isfinite(w).all() or (w < 0).any() or w[1:].sum() <= 0:
            raise ConfigError(
                f"loss.class_weights: must be finite, >= 0, with a positive foreground sum, got {w.tolist()}"
            )
        if mode == "softmax" and (w <= 0).any():
            # A zero-weight class filling a whole batch would make the weighted cross-entropy 0 / 0.
            raise ConfigError(f"loss.class_weights: softmax mode needs every weight > 0, got {w.tolist()}")
        # A buffer so .to(device) moves it and it is saved with the loss if anyone saves it.
        self.register_buffer("class_weights", w)
        self.register_buffer("region_targets", self._region_targets(mode, n_classes, membership, unannotated))

    @staticmethod
    def _region_targets(
        mode: str, n_classes: int, membership: torch.Tensor | np.ndarray | None, unannotated: bool
    ) -> torch.Tensor | None:
        # Row k: the regions a pixel of painted class k lies in, one float per output channel.
        if mode != "regions":
            if membership is not None:
                raise ConfigError(f"SegLoss: a region membership was given to a {mode} loss")
            return None
        if membership is None:
            raise ConfigError("SegLoss: regions mode needs the regions' membership (Regions.membership)")
        if unannotated:
            raise ConfigError("SegLoss: unannotated pixels together with regions are not supported")
        table = torch.as_tensor(np.asarray(membership), dtype=torch.bool)
        if table.shape != (n_classes, n_classes):
            raise ConfigError(f"SegLoss: membership must be {n_classes} x {n_classes}, got {tuple(table.shape)}")
        return table[1:].T.float().contiguous()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: ``(B, n_outputs, H, W)`` raw model outputs (any float dtype; computed in float32).
            target: ``(B, H, W)`` (or ``(B, 1, H, W)``) integer labels in ``[0, n_classes)``, or ``n_classes`` for
                unannotated pixels when the loss was built with ``unannotated=True``.

        Returns:
            A float32 scalar.

        Raises:
            ValueError: Logits and target shapes do not fit this loss.
        """
        if target.ndim == logits.ndim and target.shape[1] == 1:
            target = target[:, 0]
        if logits.shape[1] != self.n_outputs or logits.shape[:1] + logits.shape[2:] != target.shape:
            raise ValueError(
                f"SegLoss({self.mode}, n_classes={self.n_classes}) expects logits (B, {self.n_outputs}, *S) and "
                f"target (B, *S), got {tuple(logits.shape)} and {tuple(target.shape)}"
            )
        logits = logits.float()
        target = target.long()
        if self.unannotated:
            return self._partly_annotated(logits, target)
        if self.region_targets is not None:
            return self._regions(logits, target, self.region_targets)
        one_hot = F.one_hot(target, self.n_classes).movedim(-1, 1).float()
        fg_weights = self.class_weights[1:]
        if self.mode == "sigmoid":
            fg_target = one_hot[:, 1:]
            per_class = F.binary_cross_entropy_with_logits(logits, fg_target, reduction="none")
            per_class = per_class.mean(dim=[0, *range(2, logits.ndim)])
            pixel_term = (fg_weights * per_class).sum() / fg_weights.sum()
            dice = soft_dice_per_class(torch.sigmoid(logits), fg_target)
        else:
            # torch's weighted cross-entropy already is a weighted mean (divides by the summed pixel weights).
            pixel_term = F.cross_entropy(logits, target, weight=self.class_weights)
            dice = soft_dice_per_class(torch.softmax(logits, dim=1)[:, 1:], one_hot[:, 1:])
        dice_loss = (fg_weights * (1.0 - dice)).sum() / fg_weights.sum()
        return self.bce_weight * pixel_term + self.dice_weight * dice_loss

    def _regions(self, logits: torch.Tensor, target: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        # The sigmoid loss with each region's target read from the painted class: regions overlap.
        region_target = table[target].movedim(-1, 1)
        fg_weights = self.class_weights[1:]
        per_region = F.binary_cross_entropy_with_logits(logits, region_target, reduction="none")
        per_region = per_region.mean(dim=[0, *range(2, logits.ndim)])
        pixel_term = (fg_weights * per_region).sum() / fg_weights.sum()
        dice = soft_dice_per_class(torch.sigmoid(logits), region_target)
        dice_loss = (fg_weights * (1.0 - dice)).sum() / fg_weights.sum()
        return self.bce_weight * pixel_term + self.dice_weight * dice_loss

    def _partly_annotated(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # The loss above over annotated pixels only: the same means, taken over them.
        valid = target < self.n_classes
        # The one-hot of an unannotated pixel is all zero (its extra channel is dropped); its class is read as 0.
        one_hot = F.one_hot(target, self.n_classes + 1).movedim(-1, 1)[:, : self.n_classes].float()
        known = torch.where(valid, target, 0)
        mask = valid.unsqueeze(1).float()
        fg_weights = self.class_weights[1:]
        if self.mode == "sigmoid":
            fg_target = one_hot[:, 1:]
            bce = F.binary_cross_entropy_with_logits(logits, fg_target, reduction="none") * mask
            per_class = bce.sum(dim=[0, *range(2, logits.ndim)]) / mask.sum().clamp_min(1.0)
            pixel_term = (fg_weights * per_class).sum() / fg_weights.sum()
            dice = soft_dice_per_class(torch.sigmoid(logits) * mask, fg_target)
        else:
            # Weighted cross-entropy as torch computes it (a weighted mean), over the annotated pixels.
            ce = F.cross_entropy(logits, known, weight=self.class_weights, reduction="none")
            pixel_weights = self.class_weights[known] * valid
            pixel_term = (ce * valid).sum() / pixel_weights.sum().clamp_min(1e-12)
            dice = soft_dice_per_class(torch.softmax(logits, dim=1)[:, 1:] * mask, one_hot[:, 1:])
        dice_loss = (fg_weights * (1.0 - dice)).sum() / fg_weights.sum()
        return self.bce_weight * pixel_term + self.dice_weight * dice_loss

    def extra_repr(self) -> str:
        return (
            f"mode={self.mode!r}, n_classes={self.n_classes}, bce_weight={self.bce_weight}, "
            f"dice_weight={self.dice_weight}, class_weights={self.class_weights.tolist()}"
        )
