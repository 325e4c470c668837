"""The model contract and the hand-built UNet family.

- :mod:`~medseg.models.registry`: :class:`NetworkSpec` (architecture + options + channels) and
  :func:`build_model`, the one way the trainer and the predictor make a network;
- :mod:`~medseg.models.base`: :class:`SegmentationNet`, what every network offers (output conv, pad multiple,
  checkpointing);
- :mod:`~medseg.models.head`: outputs per loss mode, logits -> probabilities -> labels;
- :mod:`~medseg.models.checkpoint`: the checkpoint schema, save/load, the network from a checkpoint;
- :mod:`~medseg.models.parts` / :mod:`~medseg.models.unet`: the UNet, Attention UNet, Residual UNet and UNet++;
- :mod:`~medseg.models.summary`: the layer table, parameter count and memory estimate.
"""

from medseg.models.base import SegmentationNet
from medseg.models.head import logits_to_probs, n_outputs, probs_to_labels, resolve_mode
from medseg.models.parts import AttentionGate, DoubleConv, Down, NestedUp, OutConv, ResidualDoubleConv, Up
from medseg.models.registry import ARCHITECTURES, NetworkSpec, build_model, register_architecture, spec_from_config
from medseg.models.unet import AttentionUNet, ResidualUNet, UNet, UNetPlusPlus

__all__ = [
    "ARCHITECTURES",
    "AttentionGate",
    "AttentionUNet",
    "DoubleConv",
    "Down",
    "NestedUp",
    "NetworkSpec",
    "OutConv",
    "ResidualDoubleConv",
    "ResidualUNet",
    "SegmentationNet",
    "UNet",
    "UNetPlusPlus",
    "Up",
    "build_model",
    "logits_to_probs",
    "n_outputs",
    "probs_to_labels",
    "register_architecture",
    "resolve_mode",
    "spec_from_config",
]
