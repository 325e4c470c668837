"""BatchNorm folded into the convolution before it, for prediction.

In eval mode a BatchNorm after a convolution is a fixed per-channel scale and shift, so it can be folded into
the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_eval``): one pass over each feature map
fewer, the same outputs up to float rounding. Every block of the UNet family is ``conv -> BatchNorm -> ReLU``
(``medseg.models.parts``), and on a CPU the BatchNorm passes cost more than their arithmetic suggests, most of
all in channels_last. Measured on 2 CPU cores without native bf16 (``benchmarks/engines.py``, real scans, the
rows timed in interleaved rounds in one process; ``benchmarks/choices.md``): in fp32 + channels_last the folded
model runs 1.09x as fast on hippocampus slices and 1.13x on LA2018 slices at 1 mm, in contiguous fp32 0.98x and
1.05x. Masks were identical on every voxel, probabilities within 6e-6, and the stored reference masks
(``tests/test_reference_prediction.py``) did not change.

Where the folded convolution is followed by its ReLU, the pair runs on the CPU as one oneDNN convolution with a
ReLU post-op (:class:`ConvReLU`, the kernel ``torch.compile`` itself emits for the pair): ReLU over a bf16
feature map costs twice as long as over a float32 one (bf16 element-wise ops convert), and on a CPU with AMX it
took 15 % of the whole batch prediction of LA2018 scans. Outputs are those of ``relu(conv(x))`` (bitwise in the
tests); on other devices, with autograd, or where the kernel is missing the pair runs as before.

The predictor folds its model once when it is built, and the trainer's validation folds a copy of its weights
on every validation, so the validation Dice is that of the model prediction runs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medseg.models.parts import AttentionGate, DoubleConv, ResidualDoubleConv

#: The blocks (exact classes) whose ``nn.Sequential`` children are folded: each runs them whole in ``forward``.
FOLDED_BLOCKS: tuple[type[nn.Module], ...] = (DoubleConv, ResidualDoubleConv, AttentionGate)


def _foldable(conv: nn.Conv2d, norm: _BatchNorm) -> bool:
    # Only a BatchNorm that normalises with running statistics in eval mode is a fixed affine map; one built with
    # track_running_stats=False uses each batch's own statistics even in eval mode and must stay. Subclasses of
    # Conv2d (quantised, weight-normalised, ...) may compute differently and are left alone.
    return (
        type(conv) is nn.Conv2d
        and norm.running_mean is not None
        and norm.running_var is not None
        and norm.num_features == conv.out_channels
    )


def fold_batchnorm(model: nn.Module, *, fuse_relu: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with each BatchNorm folded into the ``Conv2d`` right before it.

    A pair is folded where a ``Conv2d`` is directly followed by a BatchNorm inside an ``nn.Sequential`` of one of
    medseg's building blocks (:data:`FOLDED_BLOCKS`), whose ``forward`` runs that Sequential whole, so the
    convolution's output feeds nothing but the BatchNorm; the convolution gains a bias and the BatchNorm becomes
    ``nn.Identity``. Everything else is left as it is: other layers, a BatchNorm without running statistics, and
    the Sequentials of a registered custom architecture's own modules, whose ``forward`` might also use a layer
    alone (folding would then change that layer's output silently). So any network can be passed. The copy is
    for inference only: training it would train the folded weights, not BatchNorm.

    Args:
        model: A network; it is not changed (nor its train/eval mode).
        fuse_relu: Also turn each folded pair's following ReLU into a :class:`ConvReLU` (where the kernel exists).

    Returns:
        The folded copy, in eval mode, on ``model``'s device and in its memory format.
    """
    folded = copy.deepcopy(model).eval()
    fuse_relu = fuse_relu and fused_conv_relu_available()
    sequentials = [
        child
        for block in folded.modules()
        if type(block) in FOLDED_BLOCKS  # exactly: a subclass may run its Sequentials differently
        for child in block.children()
        if isinstance(child, nn.Sequential)
    ]
    for module in sequentials:
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, _BatchNorm) and _foldable(conv, norm):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
        if fuse_relu:
            _fuse_relus(module)
    return folded


def fused_conv_relu_available() -> bool:
    """Whether this torch build has oneDNN's fused CPU convolution (``torch.ops.mkldnn._convolution_pointwise``)."""
    return bool(torch.backends.mkldnn.is_available()) and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _fuse_relus(module: nn.Sequential) -> None:
    """In place: ``Conv2d, Identity, ReLU`` (a folded block's pair) -> ``ConvReLU, Identity, Identity``."""
    for i in range(len(module) - 2):
        conv, gap, relu = module[i], module[i + 1], module[i + 2]
        if not (isinstance(conv, nn.Conv2d) and isinstance(gap, nn.Identity) and type(relu) is nn.ReLU):
            continue
        if type(conv) is nn.Conv2d and conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
            module[i] = ConvReLU(conv)
            module[i + 2] = nn.Identity()


class ConvReLU(nn.Module):
    """``relu(conv(x))`` as one oneDNN convolution with a ReLU post-op, for prediction on the CPU.

    Under autocast the convolution runs in the autocast dtype, as ``conv2d`` does there (weights cast once per
    dtype and cached: the copy is for inference, its weights never change). On another device, with autograd
    recording, or if the kernel refuses the input, it runs the two layers as they were.

    Args:
        conv: A ``Conv2d`` with zero padding given as numbers.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv
        self._cast: dict[tuple[torch.dtype, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._fused = True

    def _weights(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = self.conv.weight, self.conv.bias
        key = (dtype, weight.data_ptr())  # a new pointer after .to(memory_format=...) or a device move
        if key not in self._cast:
            self._cast.clear()
            self._cast[key] = (weight.detach().to(dtype), None if bias is None else bias.detach().to(dtype))
        return self._cast[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fused and x.device.type == "cpu" and not (torch.is_grad_enabled() and self.conv.weight.requires_grad):
            dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
            if dtype in (torch.float32, torch.bfloat16):
                weight, bias = self._weights(dtype)
                conv = self.conv
                try:
                    return torch.ops.mkldnn._convolution_pointwise(
                        x.to(dtype),
                        weight,
                        bias,
                        list(conv.padding),
                        list(conv.stride),
                        list(conv.dilation),
                        conv.groups,
                        "relu",
                        [],
                        "",
                    )
                except (RuntimeError, TypeError):  # a layout, build or op signature it does not take: the plain pair
                    self._fused = False
        return torch.relu_(self.conv(x))
