"""SegLoss against MONAI's DiceCELoss / DiceLoss, NaN-safety on empty classes, and the label helpers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss

from medseg.errors import ConfigError
from medseg.losses import SegLoss, logits_to_probs, n_outputs, probs_to_labels
from medseg.models.head import SIGMOID_UP_TO, resolve_mode

ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    # These tensors are small: with 2 shared cores, torch's thread pool costs more than it gains (10x here).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _label_slices(path: Path) -> torch.Tensor:
    """All axial (last-axis) slices of a hippocampus label volume as a (K, I, J) long batch."""
    label = np.asarray(nib.load(path).dataobj).astype(np.int64)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(label, 2, 0)))


def _synthetic_target(batch: int = 4, size: tuple[int, int] = (40, 48)) -> torch.Tensor:
    """Two touching blobs of classes 1 and 2, shifted per slice; the last slice is all background."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    out = np.zeros((batch, *size), dtype=np.int64)
    for b in range(batch - 1):
        out[b][(yy - 15 - b) ** 2 + (xx - 20) ** 2 < 60] = 1
        out[b][(yy - 22 - b) ** 2 + (xx - 30) ** 2 < 30] = 2
    return torch.from_numpy(out)


def _noisy_logits(target: torch.Tensor, mode: str, n_classes: int, seed: int = 0) -> torch.Tensor:
    """Logits that mostly agree with ``target`` plus noise, so the Dice is neither 0 nor 1."""
    gen = torch.Generator().manual_seed(seed)
    one_hot = F.one_hot(target, n_classes).movedim(-1, 1).float()
    if mode == "sigmoid":
        one_hot = one_hot[:, 1:]
    return 2.0 * (2.0 * one_hot - 1.0) + 2.5 * torch.randn(one_hot.shape, generator=gen)


@pytest.fixture(params=["synthetic", "sample_hippo"])
def target(request: pytest.FixtureRequest) -> torch.Tensor:
    """(B, H, W) labels 0/1/2: synthetic blobs, or every slice of a real hippocampus label (incl. empty ones)."""
    if request.param == "synthetic":
        return _synthetic_target()
    return _label_slices(request.getfixturevalue("sample_hippo") / "labelsTr" / "hippocampus_001.nii.gz")


# --- equality with MONAI ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("bce_w", "dice_w"), [(1.0, 1.0), (1.3, 0.7)])
def test_sigmoid_binary_equals_monai_dice_ce(target: torch.Tensor, bce_w: float, dice_w: float) -> None:
    binary = (target > 0).long()
    logits = _noisy_logits(binary, "sigmoid", 2)
    ours = SegLoss("sigmoid", 2, bce_weight=bce_w, dice_weight=dice_w)(logits, binary)
    # With one output channel MONAI's DiceCELoss uses BCE-with-logits, i.e. exactly our sigmoid mode.
    monai = DiceCELoss(sigmoid=True, batch=True, lambda_ce=bce_w, lambda_dice=dice_w)(logits, binary[:, None].float())
    torch.testing.assert_close(ours, monai, atol=ATOL, rtol=0)


def test_sigmoid_multiclass_equals_monai_dice_plus_bce(target: torch.Tensor) -> None:
    logits = _noisy_logits(target, "sigmoid", 3)
    fg = F.one_hot(target, 3).movedim(-1, 1)[:, 1:].float()
    ours = SegLoss("sigmoid", 3)(logits, target)
    # MONAI's DiceCELoss switches to softmax cross-entropy for >1 channel, so compose DiceLoss + BCE instead.
    monai = DiceLoss(sigmoid=True, batch=True)(logits, fg) + F.binary_cross_entropy_with_logits(logits, fg)
    torch.testing.assert_close(ours, monai, atol=ATOL, rtol=0)


def test_sigmoid_weighted_equals_monai(target: torch.Tensor) -> None:
    weights = torch.tensor([0.4, 0.5, 1.5])  # foreground weights average 1: MONAI's convention coincides
    logits = _noisy_logits(target, "sigmoid", 3, seed=1)
    fg = F.one_hot(target, 3).movedim(-1, 1)[:, 1:].float()
    ours = SegLoss("sigmoid", 3, class_weights=weights, bce_weight=0.5, dice_weight=2.0)(logits, target)
    dice = DiceLoss(sigmoid=True, batch=True, weight=weights[1:])(logits, fg)
    bce = torch.nn.BCEWithLogitsLoss(weight=weights[1:].view(1, 2, 1, 1))(logits, fg)
    torch.testing.assert_close(ours, 0.5 * bce + 2.0 * dice, atol=ATOL, rtol=0)
    unweighted = SegLoss("sigmoid", 3, bce_weight=0.5, dice_weight=2.0)(logits, target)
    assert abs(ours.item() - unweighted.item()) > 1e-3  # the class weights do act


@pytest.mark.parametrize("weights", [None, [0.3, 0.5, 1.5]])
def test_softmax_equals_monai_dice_ce(target: torch.Tensor, weights: list[float] | None) -> None:
    w = None if weights is None else torch.tensor(weights)
    logits = _noisy_logits(target, "softmax", 3, seed=2)
    ours = SegLoss("softmax", 3, class_weights=w, bce_weight=1.2, dice_weight=0.8)(logits, target)
    monai = DiceCELoss(
        include_background=False, to_onehot_y=True, softmax=True, batch=True, weight=w, lambda_ce=1.2, lambda_dice=0.8
    )(logits, target[:, None])
    torch.testing.assert_close(ours, monai, atol=ATOL, rtol=0)


def test_equals_monai_on_shared_hippocampus_case(hippo_dir: Path) -> None:
    target = _label_slices(hippo_dir / "labelsTr" / "hippocampus_004.nii.gz")
    logits = _noisy_logits(target, "softmax", 3, seed=3)
    ours = SegLoss("softmax", 3)(logits, target)
    monai = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)(logits, target[:, None])
    torch.testing.assert_close(ours, monai, atol=ATOL, rtol=0)


def test_weights_are_a_normalised_mean() -> None:
    target = _synthetic_target()
    for mode in ("sigmoid", "softmax"):
        logits = _noisy_logits(target, mode, 3)
        w = torch.tensor([0.2, 0.6, 3.0])
        torch.testing.assert_close(SegLoss(mode, 3, w)(logits, target), SegLoss(mode, 3, 7 * w)(logits, target))
        torch.testing.assert_close(
            SegLoss(mode, 3, torch.full((3,), 2.5))(logits, target), SegLoss(mode, 3)(logits, target)
        )
    # A sigmoid loss has no background output, and one foreground class has nothing to be weighed against: its
    # weights do not act (what the trainer's log says), where softmax's background weight does.
    binary = (target > 0).long()
    for mode, acts in (("sigmoid", False), ("softmax", True)):
        logits = _noisy_logits(binary, mode, 2)
        weighted, plain = SegLoss(mode, 2, torch.tensor([0.2, 1.83]))(logits, binary), SegLoss(mode, 2)(logits, binary)
        assert bool(torch.isclose(weighted, plain, rtol=1e-6, atol=0)) is not acts


# --- empty classes, precision, behaviour ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_all_background_batch_is_finite(mode: str, scale: float, sample_hippo: Path) -> None:
    # The first and last slices of a real label volume hold no hippocampus at all.
    target = _label_slices(sample_hippo / "labelsTr" / "hippocampus_001.nii.gz")[:5]
    assert target.max() == 0
    gen = torch.Generator().manual_seed(0)
    logits = (scale * torch.randn((5, n_outputs(mode, 3), *target.shape[1:]), generator=gen)).requires_grad_()
    loss = SegLoss(mode, 3, class_weights=torch.tensor([0.2, 3.0, 5.0]))(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_one_class_missing_and_half_precision_logits(mode: str) -> None:
    target = _synthetic_target()
    target[target == 2] = 1  # class 2 absent from the whole batch
    logits = _noisy_logits(target, mode, 3).to(torch.bfloat16).requires_grad_()
    loss = SegLoss(mode, 3)(logits, target)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad.float()).all()


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
def test_minimising_the_loss_recovers_the_real_label(mode: str, sample_hippo: Path) -> None:
    target = _label_slices(sample_hippo / "labelsTr" / "hippocampus_003.nii.gz")[:20]  # empty and full slices
    logits = torch.zeros((target.shape[0], n_outputs(mode, 3), *target.shape[1:]), requires_grad=True)
    loss_fn = SegLoss(mode, 3, class_weights=torch.tensor([0.3, 1.0, 1.2]))
    opt = torch.optim.Adam([logits], lr=0.5)
    first = loss_fn(logits, target).item()
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(logits, target)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first
    labels = probs_to_labels(logits_to_probs(logits.detach(), mode), mode)
    assert torch.equal(labels, target)


# --- helpers -------------------------------------------------------------------------------------------------


def test_n_outputs_and_bad_configuration() -> None:
    assert n_outputs("sigmoid", 3) == 2 and n_outputs("softmax", 3) == 3
    with pytest.raises(ConfigError, match=r"loss\.mode"):
        n_outputs("softmax2", 3)
    with pytest.raises(ConfigError, match="classes"):
        SegLoss("sigmoid", 1)
    with pytest.raises(ConfigError, match=r"loss\.class_weights.*3 values"):
        SegLoss("sigmoid", 3, class_weights=torch.ones(2))
    with pytest.raises(ConfigError, match=r"loss\.class_weights"):
        SegLoss("sigmoid", 3, class_weights=torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ConfigError, match="softmax"):
        SegLoss("softmax", 3, class_weights=torch.tensor([0.0, 1.0, 1.0]))
    SegLoss("sigmoid", 3, class_weights=torch.tensor([0.0, 1.0, 1.0]))  # background weight unused in sigmoid


def test_shape_mismatch_and_channel_target() -> None:
    target = _synthetic_target()
    logits = _noisy_logits(target, "sigmoid", 3)
    loss = SegLoss("sigmoid", 3)
    torch.testing.assert_close(loss(logits, target[:, None]), loss(logits, target))  # (B, 1, H, W) accepted
    with pytest.raises(ValueError, match=r"expects logits \(B, 3"):
        SegLoss("softmax", 3)(logits, target)
    with pytest.raises(ValueError, match="target"):
        loss(logits, target[:, :-1])


def test_logits_to_probs() -> None:
    logits = torch.randn(2, 2, 5, 6, generator=torch.Generator().manual_seed(0))
    probs = logits_to_probs(logits, "sigmoid")
    assert probs.shape == (2, 3, 5, 6)
    torch.testing.assert_close(probs[:, 1:], torch.sigmoid(logits))
    torch.testing.assert_close(probs[:, 0], 1 - torch.sigmoid(logits).amax(dim=1))
    soft = logits_to_probs(torch.randn(2, 3, 5, 6), "softmax")
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(2, 5, 6))


def test_probs_to_labels_sigmoid_threshold_and_argmax() -> None:
    # One pixel per case: no class > 0.5; class 2 wins; both > 0.5 -> most probable; exactly 0.5 -> background.
    fg = torch.tensor([[0.4, 0.45], [0.3, 0.6], [0.9, 0.7], [0.5, 0.1]]).T.reshape(1, 2, 1, 4)
    probs = torch.cat([1 - fg.amax(dim=1, keepdim=True), fg], dim=1)
    assert probs_to_labels(probs, "sigmoid").tolist() == [[[0, 2, 1, 0]]]
    # Averaged (e.g. test-time-flip) probabilities: the background channel is not consulted.
    probs[:, 0] = 0.0
    assert probs_to_labels(probs, "sigmoid").tolist() == [[[0, 2, 1, 0]]]
    # Away from ties, the rule equals a plain argmax of logits_to_probs.
    logits = torch.randn(3, 2, 16, 16, generator=torch.Generator().manual_seed(1))
    p = logits_to_probs(logits, "sigmoid")
    assert torch.equal(probs_to_labels(p, "sigmoid"), p.argmax(dim=1))


def test_probs_to_labels_softmax_is_numpy_argmax_with_ties() -> None:
    # probs_to_labels takes max(dim).indices for speed (pytorch/pytorch#140000); it must still be numpy's argmax:
    # the first of tied maxima, on any class axis, for arrays and tensors alike.
    rng = np.random.default_rng(3)
    probs = rng.integers(0, 4, size=(5, 4, 6, 7)).astype(np.float32)  # few values: many ties
    probs[:, 0, 0, :] = 1.0  # all five classes tied
    for axis in (0, 1):
        expected = np.argmax(probs, axis=axis)
        np.testing.assert_array_equal(probs_to_labels(probs, "softmax", channel_dim=axis), expected)
        got = probs_to_labels(torch.from_numpy(probs), "softmax", channel_dim=axis)
        np.testing.assert_array_equal(got.numpy(), expected)
    assert (probs_to_labels(probs, "softmax", channel_dim=0)[0, 0, :] == 0).all()  # the all-tied voxels


def test_probs_to_labels_numpy_volume_channel_first(sample_hippo: Path) -> None:
    label = np.asarray(nib.load(sample_hippo / "labelsTr" / "hippocampus_001.nii.gz").dataobj).astype(np.int64)
    one_hot = np.moveaxis(np.eye(3, dtype=np.float32)[label], -1, 0)  # (3, I, J, K) volume probabilities
    soft = 0.7 * one_hot + 0.1  # still sums to 1 per voxel
    for mode in ("softmax", "sigmoid"):
        labels = probs_to_labels(soft, mode, channel_dim=0)
        assert isinstance(labels, np.ndarray) and labels.dtype == np.int64
        np.testing.assert_array_equal(labels, label)


def test_auto_mode_takes_sigmoid_for_few_classes_and_softmax_for_many() -> None:
    assert resolve_mode("auto", 2) == ("sigmoid", "one foreground class: one sigmoid output (loss.mode: auto)")
    # The hippocampus: what its measured figures used.
    assert resolve_mode("auto", 3) == ("sigmoid", "2 classes (up to 4): a sigmoid output each (loss.mode: auto)")
    assert resolve_mode("auto", SIGMOID_UP_TO + 1)[0] == "sigmoid"
    mode, reason = resolve_mode("auto", SIGMOID_UP_TO + 2)
    assert mode == "softmax" and reason.startswith(f"{SIGMOID_UP_TO + 1} classes that exclude each other")
    assert resolve_mode("sigmoid", 42) == ("sigmoid", "set in the config (loss.mode)")  # the config wins
    with pytest.raises(ConfigError, match=r"loss\.mode: expected one of sigmoid, softmax, regions, got 'tanh'"):
        resolve_mode("tanh", 3)


@pytest.mark.parametrize("n_classes", [3, 15, 16, 42, 118])
def test_softmax_of_channels_last_logits_matches_the_plain_softmax(n_classes: int) -> None:
    """Many classes take the softmax over the innermost axis of channels_last logits (the fast path); the values
    are those of ``torch.softmax(dim=1)`` within float32 rounding, bit for bit below the threshold."""
    from medseg.models.head import SOFTMAX_LAST_DIM_FROM

    gen = torch.Generator().manual_seed(n_classes)
    logits = (4 * torch.randn((2, n_classes, 24, 20), generator=gen)).contiguous(memory_format=torch.channels_last)
    probs = logits_to_probs(logits, "softmax")
    expected = torch.softmax(logits.contiguous(), dim=1)
    if n_classes < SOFTMAX_LAST_DIM_FROM:
        assert torch.equal(probs, expected)
    else:
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
        assert probs.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones((2, 24, 20)), rtol=0, atol=1e-5)
    assert torch.equal(probs_to_labels(probs, "softmax"), probs_to_labels(expected, "softmax"))
