"""The hand-built 2D UNet family (the seed's architecture, after milesial Pytorch-UNet ``unet_model.py``).

One assembly, three variants that differ only in their parts (``medseg.models.parts``):

=================  ==========================================================================================
``UNet``           :class:`~medseg.models.parts.DoubleConv` blocks, plain skip connections (the seed's UNet)
``AttentionUNet``  the same blocks; each skip gated by an :class:`~medseg.models.parts.AttentionGate`
``ResidualUNet``   :class:`~medseg.models.parts.ResidualDoubleConv` blocks (1x1 projection shortcuts)
``UNetPlusPlus``   nested, densely connected skip pathways (:class:`~medseg.models.parts.NestedUp` nodes)
=================  ==========================================================================================

Each has ``depth`` down levels (the seed: 4), bilinear or transposed-conv upsampling and ``base_features``
channels at the first level, doubling per level down. Level modules are named ``inc``, ``down1..downD``,
``up1..upD``, ``outc`` as in the seed, so checkpoints of the seed's UNet load unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from medseg.models.base import SegmentationNet
from medseg.models.parts import Block, DoubleConv, Down, NestedUp, OutConv, ResidualDoubleConv, Up

MIN_SIZE = 16
"""Smallest H and W the seed's four 2x2 max-pools accept (``SegmentationNet.min_size`` for other depths)."""


class _EncoderNet(SegmentationNet):
    """The family's shared encoder: ``inc`` and ``down1..downD`` (named as in the seed), and ``outc`` as the head.

    Subclasses build their decoder and then ``self.outc`` (in that order: the parameter order is what an
    optimiser state in a resumed checkpoint is matched by).
    """

    outc: OutConv

    def __init__(
        self,
        n_channels: int,
        n_classes: int,
        bilinear: bool,
        base_features: int,
        depth: int,
        block: Block,
        bottleneck_divisor: int = 1,
    ) -> None:
        super().__init__(n_channels, n_classes, depth)
        if base_features < 1:
            raise ValueError(f"{type(self).__name__} needs positive sizes, got {base_features=}")
        self.n_channels = n_channels  # the seed's names, kept for scripts that read them
        self.n_classes = n_classes
        self.bilinear = bilinear
        self.base_features = base_features
        f = base_features
        self.inc = block(n_channels, f)
        # Named down1..downD / up1..upD (not a ModuleList) so the seed's state_dict keys stay valid.
        for i in range(1, depth + 1):
            out = f * 2**i // (bottleneck_divisor if i == depth else 1)
            setattr(self, f"down{i}", Down(f * 2 ** (i - 1), out, block))

    @property
    def output_conv(self) -> nn.Conv2d:
        return self.outc.conv

    def _encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[X0, X1, ..., XD]``: the encoder's output at every level, finest first."""
        self.check_input(x)
        levels = [self._block(self.inc, x)]
        for i in range(1, self.depth + 1):
            levels.append(self._block(getattr(self, f"down{i}"), levels[-1]))
        return levels


class UNet(_EncoderNet):
    """UNet: ``depth`` down levels, a bottleneck, ``depth`` up levels with skip connections, a 1x1 output conv.

    Any H, W >= ``2 ** depth`` works (odd sizes too); the output has the input's H and W. With
    ``base_features=64`` and depth 4, ``UNet(3, 1)`` has 31,037,633 parameters and ``UNet(3, 1, bilinear=True)``
    17,262,977, as in the seed.

    Args:
        n_channels: Input channels (e.g. ``2 * context_slices + 1``).
        n_classes: Output logit channels (see :func:`medseg.models.head.n_outputs`).
        bilinear: Bilinear upsampling instead of transposed convs; the bottleneck then has half the
            features (``factor = 2``) so that the concatenated skip and upsampled maps match.
        base_features: Features of the first level; they double at each level down.
        depth: Number of down levels (2x max-pools).

    Raises:
        ValueError: Non-positive sizes.
    """

    #: The convolution block of every level.
    block: ClassVar[Block] = DoubleConv
    #: Whether the skips are gated by attention.
    attention: ClassVar[bool] = False

    def __init__(
        self, n_channels: int, n_classes: int, bilinear: bool = False, base_features: int = 64, depth: int = 4
    ) -> None:
        factor = 2 if bilinear else 1
        super().__init__(n_channels, n_classes, bilinear, base_features, depth, type(self).block, factor)
        f = base_features
        for i in range(1, depth + 1):
            cat = f * 2 ** (depth - i + 1)
            out = f * 2 ** (depth - i) // factor if i < depth else f
            setattr(self, f"up{i}", Up(cat, out, bilinear, type(self).block, attention=type(self).attention))
        self.outc = OutConv(f, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, n_channels, H, W)`` images to ``(B, n_classes, H, W)`` logits."""
        skips = self._encode(x)
        x = skips.pop()
        for i in range(1, self.depth + 1):
            x = self._block(getattr(self, f"up{i}"), x, skips.pop())
        return self._block(self.outc, x)


class AttentionUNet(UNet):
    """:class:`UNet` with an attention gate on every skip connection (Attention U-Net, Oktay et al. 2018).

    The gate of each decoder level is driven by the upsampled map of the coarser level, so the decoder learns
    where in the skip to look; the arguments are :class:`UNet`'s.
    """

    attention = True


class ResidualUNet(UNet):
    """:class:`UNet` with residual double convolutions (ResU-Net): each block adds its input back.

    Shortcuts are 1x1 conv + BatchNorm projections where the channels change; the arguments are :class:`UNet`'s.
    """

    block = ResidualDoubleConv


class UNetPlusPlus(_EncoderNet):
    """UNet++ (Zhou et al. 2018): the encoder of :class:`UNet`, and a decoder node at every level and step.

    Node ``X[i, j]`` (level ``i``, ``j`` steps along the skip pathway) fuses the upsampled ``X[i+1, j-1]`` with
    all of ``X[i, 0..j-1]``; ``X[i, 0]`` is the encoder and the logits come from ``X[0, depth]`` through a 1x1
    conv (no deep supervision). Level ``i`` has ``base_features * 2 ** i`` channels at every node.

    Args:
        n_channels: Input channels.
        n_classes: Output logit channels.
        bilinear: Bilinear upsampling instead of transposed convs.
        base_features: Features of the first level; they double at each level down.
        depth: Number of down levels.

    Raises:
        ValueError: Non-positive sizes.
    """

    def __init__(
        self, n_channels: int, n_classes: int, bilinear: bool = False, base_features: int = 64, depth: int = 4
    ) -> None:
        super().__init__(n_channels, n_classes, bilinear, base_features, depth, DoubleConv)
        f = base_features
        for j in range(1, depth + 1):
            for i in range(depth - j + 1):
                setattr(self, f"node{i}_{j}", NestedUp(f * 2 ** (i + 1), j * f * 2**i, f * 2**i, bilinear))
        self.outc = OutConv(f, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, n_channels, H, W)`` images to ``(B, n_classes, H, W)`` logits."""
        # grid[i][j] = X[i, j]; the encoder fills column 0, each step j one node per level above the deepest.
        grid = [[level] for level in self._encode(x)]
        for j in range(1, self.depth + 1):
            for i in range(self.depth - j + 1):
                node = getattr(self, f"node{i}_{j}")
                grid[i].append(self._block(node, grid[i + 1][j - 1], *grid[i][:j]))
        return self._block(self.outc, grid[0][self.depth])
