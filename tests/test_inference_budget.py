"""Prediction memory bounded by a budget: ``batch_size: auto``, labels slab by slab, the label-only validation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import InferenceConfig
from medseg.data.normalization import NormalizationParams, normalize
from medseg.data.prepare import PreparedCase
from medseg.data.slicing import label_to_slices, volume_to_slices
from medseg.errors import ConfigError
from medseg.inference import slabs
from medseg.inference.budget import (
    LIVE_MAPS_FACTOR,
    MAX_AUTO_BATCH,
    auto_batch_size,
    check_batch_size,
    default_memory_gb,
    largest_map_per_pixel,
    resolve_memory_gb,
    settings_for_slices,
    slice_bytes,
)
from medseg.inference.forward import forward_slices, predict_volume_probs
from medseg.inference.settings import InferenceSettings
from medseg.inference.slabs import View, forward_labels, iter_probability_slabs, predict_volume_labels, slab_index
from medseg.io import load_volume
from medseg.models.head import probs_to_labels
from medseg.models.unet import UNet
from medseg.training.validation import validate_volumes

SETTINGS = InferenceSettings(n_classes=3, mode="softmax", batch_size=64, pad_multiple=16)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    return UNet(3, 3, base_features=4).eval()


@pytest.fixture(scope="module")
def image(sample_hippo_module: Path) -> np.ndarray:
    vol = load_volume(sample_hippo_module / "imagesTr" / "hippocampus_001.nii.gz")
    return normalize(np.asarray(vol.array), NormalizationParams("zscore"))


@pytest.fixture(scope="module")
def sample_hippo_module() -> Path:
    return Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"


def test_check_batch_size() -> None:
    assert check_batch_size("auto") == "auto"
    assert check_batch_size(3) == 3
    for bad in (0, -1, True, "8", 2.5):
        with pytest.raises(ConfigError, match="batch_size"):
            check_batch_size(bad)


def test_config_batch_size_and_memory_gb() -> None:
    assert InferenceConfig().batch_size == "auto" and InferenceConfig().memory_gb is None
    assert InferenceConfig(batch_size=8, memory_gb=1.5).memory_gb == 1.5
    for bad in ({"batch_size": 0}, {"batch_size": "big"}, {"memory_gb": 0}, {"memory_gb": -1}):
        with pytest.raises(ValueError):
            InferenceConfig(**bad)


def test_memory_budget_defaults_and_errors() -> None:
    gb = default_memory_gb(torch.device("cpu"))
    assert 0.25 <= gb <= 2.0
    assert resolve_memory_gb(None, torch.device("cpu")) == gb
    assert resolve_memory_gb(3.0, torch.device("cpu")) == 3.0
    with pytest.raises(ConfigError, match="memory_gb"):
        resolve_memory_gb(0.0, torch.device("cpu"))


def test_probe_finds_the_first_level_width(model: UNet) -> None:
    # A UNet's largest leaf output is a full-resolution map of base_features channels.
    assert largest_map_per_pixel(model, 3, torch.device("cpu")) == pytest.approx(4.0)
    wide = UNet(1, 2, base_features=32).eval()
    assert largest_map_per_pixel(wide, 1, torch.device("cpu")) == pytest.approx(32.0)
    per_slice = slice_bytes(wide, 1, (512, 512), SETTINGS.with_options(n_classes=2))
    assert per_slice == 4 * (LIVE_MAPS_FACTOR * 32 * 512 * 512 + 2 * 512 * 512 + 4 * 2 * 512 * 512)


def test_auto_batch_follows_slice_size_width_and_budget(model: UNet) -> None:
    wide = UNet(3, 3, base_features=32).eval()
    small = auto_batch_size(model, 3, (64, 64), SETTINGS, 1.0)
    assert small == MAX_AUTO_BATCH  # tiny slices: capped
    ct = auto_batch_size(wide, 3, (512, 512), SETTINGS, 2.0)
    assert 1 <= ct < MAX_AUTO_BATCH
    assert auto_batch_size(wide, 3, (512, 512), SETTINGS, 4.0) >= 2 * ct - 1  # twice the budget, ~twice the batch
    assert auto_batch_size(wide, 3, (512, 512), SETTINGS, 1e-6) == 1  # never below one slice
    assert auto_batch_size(model, 3, (512, 512), SETTINGS, 2.0) > ct  # narrower model, larger batch
    # Slices are counted at their padded size (here 500 -> 512).
    assert auto_batch_size(wide, 3, (500, 500), SETTINGS, 2.0) == ct
    # Fixed sizes pass through untouched; auto resolves.
    assert settings_for_slices(SETTINGS, 5, wide, 3, (512, 512), None).batch_size == 5
    assert settings_for_slices(SETTINGS, "auto", wide, 3, (512, 512), 2.0).batch_size == ct


@pytest.mark.parametrize(("axis", "context", "batch"), [(2, 1, 4), (0, 0, 7), (1, 2, 64)])
def test_slab_labels_equal_labels_of_the_full_probabilities(
    model: UNet, image: np.ndarray, axis: int, context: int, batch: int
) -> None:
    torch.manual_seed(1)
    net = UNet(2 * context + 1, 3, base_features=4).eval()
    settings = SETTINGS.with_options(batch_size=batch)
    probs = predict_volume_probs(net, image, axis, context, settings)
    labels = predict_volume_labels(net, image, axis, context, settings)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, probs_to_labels(probs, "softmax", channel_dim=0))
    # Slabs tile the axis in order, batch-sized, with probabilities in volume layout.
    slabs = list(iter_probability_slabs(net, image, axis, context, settings))
    assert [s.start for s in slabs] == list(range(0, image.shape[axis], batch))
    assert slabs[-1].stop == image.shape[axis]
    for s in slabs:
        np.testing.assert_array_equal(s.probs, probs[s.index()])


def test_label_tail_in_pieces_of_a_batch_gives_the_same_labels(
    model: UNet, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The tail (transform, labels, on_probs) runs on TAIL_SLICES slices of a batch at a time; pieces that do not
    # divide the batch place the same labels, and on_probs sees every slice once, in order.
    settings = SETTINGS.with_options(batch_size=7)
    expected = predict_volume_labels(model, image, 2, 1, settings)
    monkeypatch.setattr(slabs, "TAIL_SLICES", 3)
    placed: list[tuple[int, int]] = []
    labels = predict_volume_labels(
        model, image, 2, 1, settings, on_probs=lambda index, probs, _: placed.append((index[2].start, index[2].stop))
    )
    np.testing.assert_array_equal(labels, expected)
    assert [start for start, _ in placed] == [
        s for b in range(0, image.shape[2], 7) for s in range(b, min(b + 7, image.shape[2]), 3)
    ]
    assert placed[-1][1] == image.shape[2] and all(b - a <= 3 for a, b in placed)


def test_views_are_averaged_on_the_output_grid_before_the_labels(
    model: UNet, image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Test-time scales: each view's probabilities are mapped onto one grid by its transform and averaged there,
    # slab by slab. Reference: the views' whole probability volumes, transformed and averaged in numpy.
    monkeypatch.setattr(slabs, "TAIL_SLICES", 3)  # pieces that do not divide the batch
    settings = SETTINGS.with_options(batch_size=5)
    axis, context = 2, 1
    h, w = (n for a, n in enumerate(image.shape) if a != axis)
    coarse = np.ascontiguousarray(image[::2, ::2])  # another in-plane grid, the same slices

    def enlarge(probs: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)

    placed: list[tuple[slice, ...]] = []
    confidence = np.zeros(image.shape, dtype=np.float32)

    def record(index: tuple[slice, ...], probs: torch.Tensor, piece_labels: torch.Tensor) -> None:
        placed.append(index)
        confidence[index] = np.moveaxis(probs.max(dim=1).values.numpy(), 0, axis)
        # The labels handed over are those of these probabilities, the ones placed in the volume.
        np.testing.assert_array_equal(piece_labels.numpy(), probs_to_labels(probs, "softmax", channel_dim=1).numpy())

    labels = predict_volume_labels(
        model, [View(image), View(coarse, enlarge)], axis, context, settings, on_probs=record
    )
    fine_probs = predict_volume_probs(model, image, axis, context, settings)
    coarse_probs = predict_volume_probs(model, coarse, axis, context, settings)
    enlarged = enlarge(torch.from_numpy(np.moveaxis(coarse_probs, axis + 1, 0).copy()))
    mean = (fine_probs + np.moveaxis(enlarged.numpy(), 0, axis + 1)) / 2
    assert labels.shape == image.shape
    np.testing.assert_allclose(confidence, mean.max(axis=0), atol=1e-6)
    expected = probs_to_labels(mean, "softmax", channel_dim=0)
    assert (labels != expected).mean() < 1e-4  # float rounding may flip an exact tie
    # Every slice once, in order; a single view equals the one-image call bit for bit.
    n = image.shape[axis]
    assert [i[axis].start for i in placed] == [s for b in range(0, n, 5) for s in range(b, min(b + 5, n), 3)]
    assert placed[-1][axis].stop == n
    np.testing.assert_array_equal(
        predict_volume_labels(model, [View(image)], axis, context, settings),
        predict_volume_labels(model, image, axis, context, settings),
    )


def test_views_must_share_the_slices_and_carry_their_own_transform(model: UNet, image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="number of slices along axis 2"):
        predict_volume_labels(model, [View(image), View(image[:, :, :-1])], 2, 1, SETTINGS)
    with pytest.raises(ValueError, match="transform belongs to each View"):
        predict_volume_labels(model, [View(image)], 2, 1, SETTINGS, transform=lambda p: p)
    with pytest.raises(ValueError, match="no view"):
        predict_volume_labels(model, [], 2, 1, SETTINGS)
    with pytest.raises(ValueError, match="different grids"):
        predict_volume_labels(model, [View(image), View(image[::2, ::2].copy())], 2, 1, SETTINGS)


def test_transform_runs_before_the_labels_and_on_probs_sees_its_output(model: UNet, image: np.ndarray) -> None:
    settings = SETTINGS.with_options(batch_size=8)
    seen: list[tuple[int, ...]] = []
    placed: list[tuple[slice, ...]] = []

    def only_class_two_and_wider(probs: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(probs.shape))
        out = torch.zeros((probs.shape[0], probs.shape[1], probs.shape[2], probs.shape[3] + 2))
        out[:, 2] = 1.0
        return out

    def record(index: tuple[slice, ...], probs: torch.Tensor, piece_labels: torch.Tensor) -> None:
        placed.append(index)
        assert (probs[:, 2] == 1.0).all() and probs.shape[3] == image.shape[1] + 2
        assert (piece_labels == 2).all() and tuple(piece_labels.shape) == (probs.shape[0], *probs.shape[2:])

    axis = 2
    labels = predict_volume_labels(model, image, axis, 1, settings, transform=only_class_two_and_wider, on_probs=record)
    # The labels are those of the transformed probabilities, on the transform's (wider) in-plane grid.
    assert labels.shape == (image.shape[0], image.shape[1] + 2, image.shape[2]) and (labels == 2).all()
    starts = range(0, image.shape[axis], 8)
    n = [min(s + 8, image.shape[axis]) - s for s in starts]
    assert [shape[0] for shape in seen] == n and all(shape[2:] == image.shape[:2] for shape in seen)
    assert placed == [slab_index(axis, s, s + k) for s, k in zip(starts, n, strict=True)]


def test_forward_labels_equal_forward_slices(model: UNet, image: np.ndarray) -> None:
    slices = volume_to_slices(image, 2, 1)
    settings = SETTINGS.with_options(batch_size=6)
    expected = probs_to_labels(forward_slices(model, slices, settings), "softmax")
    np.testing.assert_array_equal(forward_labels(model, slices, settings), expected)


def test_validation_auto_batch_gives_the_same_dice(model: UNet, sample_hippo_module: Path) -> None:
    cases = []
    for cid in ("001", "003"):
        img = load_volume(sample_hippo_module / "imagesTr" / f"hippocampus_{cid}.nii.gz").array
        lab = load_volume(sample_hippo_module / "labelsTr" / f"hippocampus_{cid}.nii.gz").array
        norm = normalize(np.asarray(img), NormalizationParams("zscore"))
        label = label_to_slices(np.asarray(lab).astype(np.uint8), 2)
        cases.append(PreparedCase(cid, volume_to_slices(norm, 2), label, axis=2, shape=norm.shape, context=1))
    fixed = validate_volumes(model, cases, SETTINGS.with_options(batch_size=64), axis=2, keep_volumes=True)
    auto = validate_volumes(model, cases, SETTINGS, axis=2, keep_volumes=True, batch_size="auto", memory_gb=0.001)
    assert auto.per_case == fixed.per_case
    for a, b in zip(auto.predictions, fixed.predictions, strict=True):
        np.testing.assert_array_equal(a, b)
