"""The model contract: what every medseg network is, beyond ``nn.Module``.

A :class:`SegmentationNet` maps ``(B, in_channels, H, W)`` images to ``(B, out_channels, H, W)`` logits for any
H, W >= :attr:`~SegmentationNet.min_size`, and tells the rest of medseg the three things it needs to know about
it without looking at attribute names:

- :attr:`~SegmentationNet.output_conv`: the final 1x1 conv (its bias is set to the class prior before training);
- :attr:`~SegmentationNet.pad_multiple`: slices are padded to a multiple of this (``2 ** depth``);
- :meth:`~SegmentationNet.use_checkpointing`: activation checkpointing per block, exact (same outputs,
  gradients and BatchNorm statistics).
"""

from __future__ import annotations

import contextlib
from types import TracebackType

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class SegmentationNet(nn.Module):
    """Base class of medseg's networks (see the module docstring).

    Args:
        in_channels: Input channels (``2 * context_slices + 1``).
        out_channels: Output logit channels (:func:`medseg.models.head.n_outputs`).
        depth: Number of 2x down-samplings.

    Raises:
        ValueError: Non-positive sizes.
    """

    def __init__(self, in_channels: int, out_channels: int, depth: int) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or depth < 1:
            raise ValueError(f"need positive sizes, got {in_channels=}, {out_channels=}, {depth=}")
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.depth = int(depth)
        self.checkpointing = False

    @property
    def output_conv(self) -> nn.Conv2d:
        """The final conv that produces the logits (one output channel per logit)."""
        raise NotImplementedError(f"{type(self).__name__} does not name its output conv")

    @property
    def pad_multiple(self) -> int:
        """H and W must be padded to a multiple of this for the skips to line up without rounding."""
        return 2**self.depth

    @property
    def min_size(self) -> int:
        """Smallest H and W the down-samplings accept (each level must keep at least one pixel)."""
        return 2**self.depth

    def check_input(self, x: torch.Tensor) -> None:
        """Raises ``ValueError`` unless ``x`` is ``(B, in_channels, H, W)`` with H, W >= :attr:`min_size`."""
        if x.ndim != 4 or x.shape[1] != self.in_channels or min(x.shape[2:]) < self.min_size:
            raise ValueError(
                f"{type(self).__name__} expects (B, {self.in_channels}, H, W) with H, W >= {self.min_size}, "
                f"got {tuple(x.shape)}"
            )

    def use_checkpointing(self, enabled: bool = True) -> SegmentationNet:
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
        """Runs ``block(*xs)``, checkpointed when :meth:`use_checkpointing` is on and autograd records."""
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
