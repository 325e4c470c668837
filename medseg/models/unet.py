"""The hand-built 2D UNet (the seed's architecture, after milesial Pytorch-UNet ``unet_model.py``)."""

from __future__ import annotations

import contextlib
from types import TracebackType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from medseg.models.parts import DoubleConv, Down, OutConv, Up

MIN_SIZE = 16
"""Smallest H and W the four 2x2 max-pools accept (each level must keep at least one pixel)."""


class UNet(nn.Module):
    """UNet: four down levels, a bottleneck, four up levels with skip connections, a 1x1 output conv.

    Any H, W >= 16 works (odd sizes too); the output has the input's H and W. With ``base_features=64``,
    ``UNet(3, 1)`` has 31,037,633 parameters and ``UNet(3, 1, bilinear=True)`` 17,262,977, as in the seed.

    Args:
        n_channels: Input channels (e.g. ``2 * context_slices + 1``).
        n_classes: Output logit channels (see :func:`medseg.losses.n_outputs`).
        bilinear: Bilinear upsampling instead of transposed convs; the bottleneck then has half the
            features (``factor = 2``) so that the concatenated skip and upsampled maps match.
        base_features: Features of the first level; they double at each level down.
    """

    def __init__(self, n_channels: int, n_classes: int, bilinear: bool = False, base_features: int = 64) -> None:
        super().__init__()
        if n_channels < 1 or n_classes < 1 or base_features < 1:
            raise ValueError(f"UNet needs positive sizes, got {n_channels=}, {n_classes=}, {base_features=}")
        self.n_channels = n_channels
        self.n_classes = n_classes
        self.bilinear = bilinear
        self.base_features = base_features
        self.checkpointing = False
        f = base_features
        factor = 2 if bilinear else 1
        self.inc = DoubleConv(n_channels, f)
        self.down1 = Down(f, 2 * f)
        self.down2 = Down(2 * f, 4 * f)
        self.down3 = Down(4 * f, 8 * f)
        self.down4 = Down(8 * f, 16 * f // factor)
        self.up1 = Up(16 * f, 8 * f // factor, bilinear)
        self.up2 = Up(8 * f, 4 * f // factor, bilinear)
        self.up3 = Up(4 * f, 2 * f // factor, bilinear)
        self.up4 = Up(2 * f, f, bilinear)
        self.outc = OutConv(f, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, n_channels, H, W)`` images to ``(B, n_classes, H, W)`` logits."""
        if x.ndim != 4 or x.shape[1] != self.n_channels or min(x.shape[2:]) < MIN_SIZE:
            raise ValueError(f"UNet expects (B, {self.n_channels}, H, W) with H, W >= {MIN_SIZE}, got {tuple(x.shape)}")
        x1 = self._block(self.inc, x)
        x2 = self._block(self.down1, x1)
        x3 = self._block(self.down2, x2)
        x4 = self._block(self.down3, x3)
        x5 = self._block(self.down4, x4)
        x = self._block(self.up1, x5, x4)
        x = self._block(self.up2, x, x3)
        x = self._block(self.up3, x, x2)
        x = self._block(self.up4, x, x1)
        return self._block(self.outc, x)

    def use_checkpointing(self, enabled: bool = True) -> UNet:
        """Recompute each block's activations in the backward pass instead of storing them (less memory, slower).

        Outputs, gradients and BatchNorm running statistics are the same as without checkpointing; the
        parameters and ``state_dict`` keys do not change, so checkpoints load either way.

        Args:
            enabled: ``False`` switches checkpointing off again.

        Returns:
            The model itself, for chaining.
        """
        self.checkpointing = enabled
        return self

    def _block(self, block: nn.Module, *xs: torch.Tensor) -> torch.Tensor:
        # Without autograd there is nothing to recompute; checkpointing would only add overhead.
        if not (self.checkpointing and torch.is_grad_enabled()):
            return block(*xs)
        if torch.compiler.is_compiling():
            # torch.compile only accepts TorchDispatchMode contexts here; BatchNorm running stats are then
            # updated twice per step (the outputs and gradients are still the same).
            return checkpoint(block, *xs, use_reentrant=False)
        return checkpoint(
            block, *xs, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _KeepBatchNormStats(block))
        )


class _KeepBatchNormStats:
    """Context for the recomputation pass: undo its BatchNorm running-stat updates.

    In train mode the recomputed forward normalises with the same batch statistics (so outputs and gradients
    are unchanged) but would also update ``running_mean``/``running_var``/``num_batches_tracked`` a second
    time, i.e. a different momentum and different eval-mode behaviour than the plain model. Reusable because
    a ``retain_graph`` backward can recompute more than once.
    """

    def __init__(self, module: nn.Module) -> None:
        self.norms = [
            m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [(b, b.clone()) for m in self.norms for b in _stats(m)]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Also on exceptions: checkpoint's early stop ends the recomputation by raising.
        with torch.no_grad():
            for buffer, value in self.saved:
                buffer.copy_(value)
        self.saved = []


def _stats(norm: nn.Module) -> list[torch.Tensor]:
    return [norm.running_mean, norm.running_var, norm.num_batches_tracked]  # type: ignore[list-item]
