"""Slicing on real volumes: the slice count, the axis rule, 2.5D context at the edges, exact inverses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.dataset import SliceDataset
from medseg.data.prepare import prepare_training_data
from medseg.data.slicing import (
    label_to_slices,
    pad_to_shape,
    padded_size,
    resolve_slice_axis,
    slices_to_volume,
    unpad,
    volume_to_slices,
)
from medseg.io import load_volume


def test_slice_count_is_sum_of_extents_along_chosen_axis(hippo_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=hippo_dir))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
    assert data.axis == 2  # 1 mm isotropic: a tie, which goes to the last axis
    shapes = [p.shape for p in data.train]
    dataset = SliceDataset(data.train)
    assert len(dataset) == sum(s[2] for s in shapes)
    assert all(p.n_slices == p.shape[2] and p.image.shape[2:] == p.shape[:2] for p in data.train)
    # The patch covers the largest slice, rounded up to 16.
    max_i, max_j = max(s[0] for s in shapes), max(s[1] for s in shapes)
    assert dataset.patch_hw == (-(-max_i // 16) * 16, -(-max_j // 16) * 16)
    # Foreground flags agree with the labels: about 26 of ~36 slices per case hold hippocampus.
    fg_share = dataset.foreground.mean()
    assert 0.6 < fg_share < 0.85


def test_other_axis_from_config(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=3))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(slice_axis=0), reader=load_volume)
    assert data.axis == 0
    assert len(SliceDataset(data.train)) == sum(p.shape[0] for p in data.train)


@pytest.mark.parametrize(
    ("spacing", "expected"),
    [((1.0, 1.0, 1.0), 2), ((0.69, 0.69, 6.5), 2), ((3.0, 0.8, 0.8), 0), ((1.0, 2.0, 2.0), 2), ((1, 1.0000001, 1), 2)],
)
def test_auto_axis_is_largest_spacing_ties_last(spacing: tuple[float, ...], expected: int) -> None:
    assert resolve_slice_axis(spacing, "auto") == expected
    assert resolve_slice_axis(spacing, 1) == 1


def test_pgbm_slices_along_thick_axis(pgbm_dir: Path) -> None:
    spec = discover_cases(DataConfig(root=pgbm_dir, layout="dicom", classes=["bg", "tumour"], max_cases=1))
    image = load_volume(spec.cases[0].image)
    assert resolve_slice_axis(image.spacing, "auto") == int(np.argmax(image.spacing))
    assert image.spacing.max() == pytest.approx(6.5, abs=0.01)  # IPP spacing, not SliceThickness (5 mm)


def test_roundtrip_and_context_edges(sample_hippo: Path) -> None:
    image = load_volume(sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[0]).array.astype(np.float32)
    for axis in (0, 1, 2):
        slices = volume_to_slices(image, axis, context=2)
        n = image.shape[axis]
        assert slices.shape[:2] == (n, 5) and slices.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(slices_to_volume(slices[:, 2], axis), image)
        centre = np.take(image, 0, axis=axis)
        # First slice: neighbours before the start replicate the edge slice.
        for c in range(3):
            np.testing.assert_array_equal(slices[0, c], centre)
        np.testing.assert_array_equal(slices[0, 3], np.take(image, 1, axis=axis))
        np.testing.assert_array_equal(slices[n - 1, 4], np.take(image, n - 1, axis=axis))
        np.testing.assert_array_equal(slices[5, 0], np.take(image, 3, axis=axis))
        label = (image > image.mean()).astype(np.uint8)
        lab_slices = label_to_slices(label, axis)
        assert lab_slices.dtype == np.uint8
        np.testing.assert_array_equal(slices_to_volume(lab_slices, axis), label)


def test_slices_to_volume_with_channels(rng: np.random.Generator) -> None:
    vol = rng.random((5, 6, 7))
    probs = np.stack([vol, 1 - vol])  # (K=2, I, J, K)
    for axis in (0, 1, 2):
        slices = np.stack([volume_to_slices(p, axis)[:, 0] for p in probs], axis=1)  # (N, 2, H, W)
        np.testing.assert_allclose(slices_to_volume(slices, axis), probs.astype(np.float32))


def test_padding_is_undone_exactly(rng: np.random.Generator) -> None:
    arr = rng.random((3, 2, 37, 50)).astype(np.float32)
    target = padded_size(arr.shape[-2:], 16)
    assert target == (48, 64)
    padded, pad = pad_to_shape(arr, target)
    assert padded.shape == (3, 2, 48, 64)
    assert (pad.top, pad.bottom, pad.left, pad.right) == (5, 6, 7, 7)
    assert np.all(padded[..., : pad.top, :] == 0) and np.all(padded[..., -pad.bottom :, :] == 0)
    np.testing.assert_array_equal(unpad(padded, pad), arr)
    tensor, tpad = pad_to_shape(torch.from_numpy(arr), target)
    assert tpad == pad
    np.testing.assert_array_equal(tensor.numpy(), padded)
    np.testing.assert_array_equal(unpad(tensor, tpad).numpy(), arr)
    assert padded_size((37, 50), 16, minimum=(64, 20)) == (64, 64)
    same, zero = pad_to_shape(arr, (37, 50))
    assert same is arr and zero.is_zero
    with pytest.raises(ValueError, match="smaller"):
        pad_to_shape(arr, (32, 64))
