"""The hand-built 2D UNet and its building blocks."""

from medseg.models.parts import DoubleConv, Down, OutConv, Up
from medseg.models.unet import UNet

__all__ = ["DoubleConv", "Down", "OutConv", "UNet", "Up"]
