"""The hand-built UNet: the seed's parameter counts, odd sizes, channels_last, and exact activation checkpointing."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from medseg.models import NetworkSpec, UNet, Up, build_model


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # Small models on 2 shared cores: torch's thread pool costs more than it gains.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def _real_batch(sample_hippo: Path) -> torch.Tensor:
    """Four middle axial slices of a real hippocampus MRI (35 x 51: odd sizes), z-scored, as (4, 3, 35, 51)."""
    image = np.asarray(nib.load(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz").dataobj, dtype=np.float32)
    image = (image - image.mean()) / image.std()
    slices = np.moveaxis(image, 2, 0)[14:18]  # (4, 35, 51)
    return torch.from_numpy(np.repeat(slices[:, None], 3, axis=1).copy())


@pytest.mark.parametrize(("bilinear", "expected"), [(False, 31_037_633), (True, 17_262_977)])
def test_parameter_counts_match_the_seed(bilinear: bool, expected: int) -> None:
    model = UNet(3, 1, bilinear=bilinear)
    assert _n_params(model) == expected
    assert isinstance(model.up1.up, nn.Upsample if bilinear else nn.ConvTranspose2d)


@pytest.mark.parametrize("bilinear", [False, True])
@pytest.mark.parametrize("hw", [(35, 51), (16, 16), (33, 64)])
def test_odd_sizes_keep_the_input_size(bilinear: bool, hw: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = UNet(3, 2, bilinear=bilinear, base_features=4).eval()
    with torch.inference_mode():
        out = model(torch.randn(2, 3, *hw))
    assert out.shape == (2, 2, *hw)
    assert torch.isfinite(out).all()


def test_up_pads_the_short_map_to_the_skip() -> None:
    up = Up(8, 4, bilinear=False)
    out = up(torch.randn(1, 8, 8, 12), torch.randn(1, 4, 17, 25))  # 8 -> 16 (one short of 17), 12 -> 24
    assert out.shape == (1, 4, 17, 25)


def test_too_small_or_wrong_channels_is_a_clear_error() -> None:
    model = UNet(3, 1, base_features=4)
    with pytest.raises(ValueError, match="H, W >= 16"):
        model(torch.randn(1, 3, 15, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))


def test_checkpointing_keeps_the_state_dict() -> None:
    model = UNet(3, 2, base_features=4)
    keys = list(model.state_dict())
    model.use_checkpointing()
    # The seed replaced blocks by the torch.utils.checkpoint *module*; ours keeps every block a module, so
    # checkpoints trained with and without checkpointing load into each other.
    assert list(model.state_dict()) == keys
    assert all(isinstance(child, nn.Module) for child in model.children())


@pytest.mark.parametrize("bilinear", [False, True])
def test_checkpointing_eval_mode_same_outputs_and_gradients(bilinear: bool, sample_hippo: Path) -> None:
    torch.manual_seed(0)
    plain = UNet(3, 2, bilinear=bilinear, base_features=8).eval()
    ckpt = copy.deepcopy(plain).use_checkpointing()
    x = _real_batch(sample_hippo)
    outs = []
    for model in (plain, ckpt):
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.square().mean().backward()
        outs.append((out.detach(), xi.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-6, rtol=0)
    torch.testing.assert_close(outs[0][1], outs[1][1], atol=1e-6, rtol=0)  # gradient w.r.t. the input
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("arch", ["unet", "attention_unet", "residual_unet", "unet_plus_plus"])
@pytest.mark.parametrize("bilinear", [False, True])
def test_checkpointing_train_mode_same_gradients_and_batchnorm_stats(
    arch: str, bilinear: bool, sample_hippo: Path
) -> None:
    """Two SGD steps in train mode: outputs, gradients, weights and BatchNorm running stats all agree.

    Recomputation runs each block's forward a second time; it normalises with the same batch statistics (so
    outputs and gradients are unchanged) and the model undoes its second running-stat update, so the stats (and
    therefore eval-mode predictions) match the plain model too. Every architecture of the registry.
    """
    torch.manual_seed(0)
    plain = build_model(NetworkSpec(arch, 3, 2, {"bilinear": bilinear, "base_features": 8})).train()
    ckpt = copy.deepcopy(plain).use_checkpointing()
    calls: list[int] = []
    ckpt.down2.register_forward_pre_hook(lambda *_: calls.append(1))
    x = _real_batch(sample_hippo)
    results = []
    for model in (plain, ckpt):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        steps = []
        for step in range(2):
            opt.zero_grad()
            out = model(x + 0.1 * step)
            out.square().mean().backward()
            steps.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
            opt.step()
        results.append((steps, _bn_state(model), model.state_dict()))
    assert len(calls) == 4  # forward + recomputation in backward, twice: checkpointing really happened
    for (out_a, grads_a), (out_b, grads_b) in zip(results[0][0], results[1][0], strict=True):
        torch.testing.assert_close(out_a, out_b, atol=1e-6, rtol=0)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) == len(list(plain.parameters()))
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-6, rtol=0, msg=name)
    stats_a, stats_b = results[0][1], results[1][1]
    assert stats_a["inc.double_conv.1.num_batches_tracked"].item() == 2
    for name in stats_a:
        torch.testing.assert_close(stats_a[name], stats_b[name], atol=1e-6, rtol=0, msg=name)
    for name, value in results[0][2].items():
        torch.testing.assert_close(value, results[1][2][name], atol=1e-6, rtol=0, msg=name)


def test_checkpointing_skipped_without_autograd_and_switchable() -> None:
    model = UNet(3, 1, base_features=4).use_checkpointing()
    calls: list[int] = []
    model.inc.register_forward_pre_hook(lambda *_: calls.append(1))
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        model(x)
    assert len(calls) == 1
    model.use_checkpointing(False)(x).sum().backward()
    assert len(calls) == 2  # plain forward, no recomputation


def test_checkpointing_with_retained_graph_keeps_stats() -> None:
    torch.manual_seed(0)
    model = UNet(3, 1, base_features=4).use_checkpointing().train()
    out = model(torch.randn(2, 3, 32, 32)).sum()
    out.backward(retain_graph=True)
    out.backward()  # recomputes a second time
    counts = {v.item() for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}
    assert counts == {1}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_channels_last_matches_contiguous(checkpointing: bool) -> None:
    torch.manual_seed(0)
    model = UNet(3, 2, base_features=8).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last).use_checkpointing(checkpointing)
    x = torch.randn(2, 3, 35, 51)
    ref = model(x)
    out = fast(x.to(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)  # no silent conversion back and forth
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    ref.sum().backward()
    out.sum().backward()
    for p, q in zip(model.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-4, rtol=1e-4)


def test_bf16_autocast_with_checkpointing_trains() -> None:
    torch.manual_seed(0)
    model = UNet(3, 2, base_features=4).to(memory_format=torch.channels_last).use_checkpointing()
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
