"""BatchNorm folded into the convolutions for prediction: same outputs, the caller's model untouched."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from medseg.data.normalization import NormalizationParams
from medseg.inference import Predictor
from medseg.inference.forward import forward_slices
from medseg.inference.predictor import ModelSpec
from medseg.inference.settings import InferenceSettings
from medseg.models import ARCHITECTURES
from medseg.models.fusion import ConvReLU, fold_batchnorm, fused_conv_relu_available
from medseg.models.parts import DoubleConv
from medseg.models.registry import NetworkSpec, build_model
from medseg.training import validation
from medseg.training.validation import validate_volumes


def _trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with BatchNorm running statistics and affine parameters far from their initial 0/1."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen))
    return model


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_copy_gives_the_same_outputs_and_leaves_the_model(arch: str, channels_last: bool) -> None:
    torch.manual_seed(0)
    net = build_model(NetworkSpec(arch, 3, 2, {"base_features": 4, "depth": 3, "bilinear": False}))
    model = _trained_statistics(net).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    folded = fold_batchnorm(model)

    # The caller's model: same object state, same mode, every BatchNorm still there.
    assert model.training and not folded.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # Every BatchNorm of the UNet family follows a conv in a Sequential, so none is left.
    assert _batchnorms(model) > 0 and _batchnorms(folded) == 0
    # The memory format is kept, so channels_last prediction needs no conversion of the copy.
    conv = next(m for m in folded.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last

    x = torch.randn(2, 3, 32, 48)
    with torch.inference_mode():
        expected = model.eval()(x)
        got = folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()


needs_fused_kernel = pytest.mark.skipif(
    not fused_conv_relu_available(), reason="this torch build has no oneDNN fused convolution (mkldnn)"
)


@needs_fused_kernel
def test_folded_blocks_run_conv_and_relu_as_one_kernel() -> None:
    """Every conv -> BatchNorm -> ReLU of a folded UNet becomes one ConvReLU; the ReLUs after a sum stay."""
    model = _trained_statistics(build_model(NetworkSpec("unet", 3, 2, {"base_features": 4, "depth": 3})))
    folded = fold_batchnorm(model)
    blocks = [m for m in folded.modules() if isinstance(m, DoubleConv)]
    assert blocks and all(sum(isinstance(c, ConvReLU) for c in b.double_conv) == 2 for b in blocks)
    assert not any(isinstance(m, nn.ReLU) for b in blocks for m in b.modules())
    residual = fold_batchnorm(
        _trained_statistics(build_model(NetworkSpec("residual_unet", 3, 2, {"base_features": 4})))
    )
    assert any(isinstance(m, ConvReLU) for m in residual.modules())


@needs_fused_kernel
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv_relu_equals_the_two_layers(channels_last: bool) -> None:
    """float32 (both layouts) and under bf16 autocast, as ``relu(conv(x))``; with autograd recording it runs the
    two layers, so gradients flow."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    conv = nn.Conv2d(6, 8, 3, padding=1).to(memory_format=fmt)  # type: ignore[call-overload]
    fused = ConvReLU(conv)
    x = torch.randn(4, 6, 20, 24).contiguous(memory_format=fmt)
    with torch.inference_mode():
        expected, got = torch.relu(conv(x)), fused(x)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        assert got.is_contiguous(memory_format=fmt)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected_bf16, got_bf16 = torch.relu(conv(x)), fused(x)
    assert got_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(got_bf16.float(), expected_bf16.float(), rtol=1e-2, atol=1e-2)
    out = fused(x.requires_grad_())
    out.sum().backward()
    assert conv.weight.grad is not None and x.grad is not None
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=1e-6)


def test_batchnorm_without_running_statistics_is_left_alone() -> None:
    # Such a BatchNorm normalises with each batch's own statistics even in eval mode: not a fixed affine map.
    block = _trained_statistics(DoubleConv(1, 4))
    block.double_conv[1] = nn.BatchNorm2d(4, track_running_stats=False)
    folded = fold_batchnorm(block)
    assert isinstance(folded.double_conv[1], nn.BatchNorm2d) and folded.double_conv[0].bias is None
    assert isinstance(folded.double_conv[4], nn.Identity)  # the second pair is folded
    x = torch.randn(3, 1, 9, 9)
    with torch.no_grad():
        assert torch.allclose(folded(x), block.eval()(x), rtol=1e-4, atol=1e-5)


def test_sequentials_outside_medseg_blocks_are_left_alone() -> None:
    # A custom architecture's forward may also call a layer of its Sequential alone (say, conv as a skip), which
    # folding would change; only medseg's own blocks, which run their Sequentials whole, are folded.
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seq = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
            self.block = DoubleConv(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.block(self.seq(x)) + self.seq[0](x)

    model = _trained_statistics(Custom()).eval()
    folded = fold_batchnorm(model)
    assert isinstance(folded.seq[1], nn.BatchNorm2d) and _batchnorms(folded.block) == 0
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), rtol=1e-4, atol=1e-5)


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _trained_statistics(build_model(NetworkSpec("unet", 1, 2, {"base_features": 4, "depth": 3})), seed).train()


def _settings() -> InferenceSettings:
    return InferenceSettings.resolve(
        n_classes=2, mode="softmax", device="cpu", precision="fp32", channels_last=False, batch_size=3
    )


def _slices(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(5, 1, 32, 48)).astype(np.float32)


def test_predictor_runs_a_folded_copy_with_the_probabilities_of_the_model() -> None:
    net = _model(1)
    spec = ModelSpec(("background", "a"), "softmax", NormalizationParams("zscore"), slice_axis=2, context_slices=0)
    predictor = Predictor(net, spec, device="cpu", precision="fp32", channels_last=False)
    assert net.training and _batchnorms(net) > 0  # the caller's model is not changed
    assert _batchnorms(predictor.model) == 0 and type(predictor.model) is type(net)

    slices = _slices(0)
    expected = forward_slices(net, slices, predictor.settings)
    got = forward_slices(predictor.model, slices, predictor.settings)
    assert np.abs(got - expected).max() < 1e-5
    assert np.array_equal(got.argmax(1), expected.argmax(1))


class _Case:
    """A prepared validation case as ``validate_volumes`` reads it: slices along axis 0 and their labels."""

    id = "case"

    def __init__(self, image: np.ndarray, label: np.ndarray) -> None:
        self.image, self.label = image, label
        self.n_slices, self.network_channels = image.shape[0], image.shape[1]

    def network_input(self, start: int, stop: int) -> np.ndarray:
        return self.image[start:stop]


def test_validation_scores_the_folded_weights_and_leaves_the_training_model(monkeypatch: pytest.MonkeyPatch) -> None:
    net = _model(2)
    slices = _slices(1)
    with torch.no_grad():  # centre the output so that about half the pixels are foreground
        probs = forward_slices(net, slices, _settings())
        net.output_conv.bias[1] -= float(np.median(np.log(probs[:, 1] / probs[:, 0])))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    # Labels = the unfolded model's own masks, so Dice 1 means validation predicted exactly those masks.
    label = forward_slices(net, slices, _settings()).argmax(1).astype(np.uint8)
    assert 0.2 < label.mean() < 0.8  # both classes, or Dice 1 would prove little

    seen: list[nn.Module] = []
    forward_labels = validation.forward_labels

    def spy(model: nn.Module, *args: Any) -> np.ndarray:
        seen.append(model)
        return forward_labels(model, *args)

    monkeypatch.setattr(validation, "forward_labels", spy)
    result = validate_volumes(net, [_Case(slices, label)], _settings(), axis=0)  # type: ignore[list-item]

    assert result.mean == pytest.approx(1.0)
    assert seen and all(m is not net and _batchnorms(m) == 0 for m in seen)  # the predictor's folded weights
    assert net.training and _batchnorms(net) > 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
