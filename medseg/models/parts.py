"""UNet building blocks (the seed's architecture, after milesial Pytorch-UNet ``unet_parts.py``).

The variants reuse the same parts: :class:`Down` and :class:`Up` take the block they apply (``DoubleConv`` or
:class:`ResidualDoubleConv`), and :class:`Up` optionally gates its skip connection with an
:class:`AttentionGate`. With the defaults every part is the seed's, so the plain UNet's ``state_dict`` keys and
parameter counts do not change.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn_relu_conv_bn(in_channels: int, mid_channels: int, out_channels: int) -> list[nn.Module]:
    # The convs have no bias because BatchNorm follows them.
    return [
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(mid_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class DoubleConv(nn.Module):
    """(3x3 conv => BatchNorm => ReLU) twice; the convs have no bias because BatchNorm follows them.

    Args:
        in_channels: Channels of the input.
        out_channels: Channels of the output.
        mid_channels: Channels between the two convs; ``None`` = ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        self.double_conv = nn.Sequential(
            *_conv_bn_relu_conv_bn(in_channels, mid_channels or out_channels, out_channels), nn.ReLU(inplace=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class ResidualDoubleConv(nn.Module):
    """:class:`DoubleConv` with a residual shortcut (ResU-Net): ``ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))``.

    The shortcut is the identity when the channels stay the same, else a 1x1 conv + BatchNorm projection (the
    seed's ``ResidualDoubleConv``), so the sum is always defined. Arguments as :class:`DoubleConv`'s.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        # The ReLU comes after the sum, so the residual path ends at the second BatchNorm.
        mid = mid_channels or out_channels
        self.double_conv = nn.Sequential(*_conv_bn_relu_conv_bn(in_channels, mid, out_channels))
        self.shortcut: nn.Module = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.BatchNorm2d(out_channels)
            )
        )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.double_conv(x) + self.shortcut(x))


#: A convolution block: ``block(in_channels, out_channels, mid_channels)``.
Block = Callable[..., nn.Module]


class AttentionGate(nn.Module):
    """Additive attention on a skip connection (Attention U-Net, Oktay et al. 2018; the seed's ``AttentionGate``).

    The gating signal ``g`` comes from the coarser decoder level (upsampled to the skip's size); both are
    projected to ``inter_channels`` by 1x1 conv + BatchNorm, added, passed through ReLU, a 1x1 conv to one
    channel, BatchNorm and a sigmoid: one attention weight in (0, 1) per pixel, which multiplies the skip.

    Args:
        gate_channels: Channels of the gating signal ``g``.
        skip_channels: Channels of the skip connection ``x``.
        inter_channels: Channels of the joint projection (``None`` = ``max(1, skip_channels // 2)``).
    """

    def __init__(self, gate_channels: int, skip_channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        inter = inter_channels or max(1, skip_channels // 2)
        self.w_g = nn.Sequential(nn.Conv2d(gate_channels, inter, kernel_size=1), nn.BatchNorm2d(inter))
        self.w_x = nn.Sequential(nn.Conv2d(skip_channels, inter, kernel_size=1), nn.BatchNorm2d(inter))
        self.psi = nn.Sequential(nn.Conv2d(inter, 1, kernel_size=1), nn.BatchNorm2d(1), nn.Sigmoid())
        self.relu = nn.ReLU(inplace=True)

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Returns ``x`` weighted by the attention computed from ``g`` and ``x`` (same H, W)."""
        attention = self.psi(self.relu(self.w_g(g) + self.w_x(x)))
        return x * attention


def pad_to(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` zero-padded to ``like``'s H and W (split evenly, the extra pixel at the end); ``x`` itself if they match.

    Odd sizes were rounded down by the max-pool, so an upsampled map can be a pixel short per level; it is padded to
    the skip's size instead of cropping the skip. Slices padded to the network's multiple (as medseg pads them)
    never need it, and ``F.pad`` copies even a zero pad: 4 copies per forward pass, 3 ms of a 132 ms hippocampus
    prediction on 2 CPU cores.
    """
    diff_y = like.size(2) - x.size(2)
    diff_x = like.size(3) - x.size(3)
    if diff_x == 0 and diff_y == 0:
        return x
    return F.pad(x, [diff_x // 2, diff_x - diff_x // 2, diff_y // 2, diff_y - diff_y // 2])


class Down(nn.Module):
    """2x2 max-pool (halves H and W, rounding down) then ``block`` (default :class:`DoubleConv`)."""

    def __init__(self, in_channels: int, out_channels: int, block: Block = DoubleConv) -> None:
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), block(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """Upsample the deeper map, concatenate the skip connection, then ``block`` (default :class:`DoubleConv`).

    Args:
        in_channels: Channels of the concatenation (skip + upsampled deeper map; each has half).
        out_channels: Channels of the output.
        bilinear: ``True`` = parameter-free bilinear upsampling (``x1`` keeps its channels, which must then
            equal the skip's); ``False`` = a learned 2x2 transposed conv that halves the channels.
        block: The convolution block after the concatenation.
        attention: Gate the skip with an :class:`AttentionGate` driven by the upsampled deeper map.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        bilinear: bool = True,
        block: Block = DoubleConv,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            self.conv = block(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = block(in_channels, out_channels)
        # Registered only when used, so the plain UNet's state_dict keys stay the seed's.
        self.gate: AttentionGate | None = AttentionGate(in_channels // 2, in_channels // 2) if attention else None

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Upsample ``x1`` (deeper) and fuse it with the skip ``x2``; the output has ``x2``'s H and W."""
        x1 = pad_to(self.up(x1), x2)
        if self.gate is not None:
            x2 = self.gate(x1, x2)
        return self.conv(torch.cat([x2, x1], dim=1))


class OutConv(nn.Module):
    """1x1 conv to one logit map per output channel."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class NestedUp(nn.Module):
    """One UNet++ decoder node: upsample the deeper node, concatenate it with every same-level node before it.

    Args:
        deep_channels: Channels of the deeper node ``X[i+1, j-1]``.
        skip_channels: Channels of all same-level nodes ``X[i, 0..j-1]`` together.
        out_channels: Channels of the output.
        bilinear: Bilinear upsampling (keeps the channels) instead of a 2x2 transposed conv (halves them).
        block: The convolution block after the concatenation.
    """

    def __init__(
        self, deep_channels: int, skip_channels: int, out_channels: int, bilinear: bool, block: Block = DoubleConv
    ) -> None:
        super().__init__()
        self.up: nn.Module
        if bilinear:
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
            up_channels = deep_channels
        else:
            self.up = nn.ConvTranspose2d(deep_channels, deep_channels // 2, kernel_size=2, stride=2)
            up_channels = deep_channels // 2
        self.conv = block(skip_channels + up_channels, out_channels)

    def forward(self, deep: torch.Tensor, *skips: torch.Tensor) -> torch.Tensor:
        """Fuse the upsampled ``deep`` with ``skips`` (all of the same H, W); the output has their H, W."""
        x = pad_to(self.up(deep), skips[0])
        return self.conv(torch.cat([*skips, x], dim=1))
