"""MONAI augmentation on real hippocampus slices: labels keep their values, image and label stay aligned,
probability 0 is the identity, seeds reproduce."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import AugmentationConfig, DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.dataset import SliceDataset
from medseg.data.prepare import prepare_training_data
from medseg.data.transforms import train_transforms
from medseg.errors import ConfigError
from medseg.io import load_volume

STRONG = {
    "elastic": {"prob": 1.0, "magnitude": (2.0, 4.0)},
    "affine": {"prob": 1.0, "rotate_deg": 25.0, "scale": 0.2},
    "flip": {"prob": 0.5, "axes": [0, 1]},
    "noise": {"prob": 0.0},
    "scale_intensity": {"prob": 0.0},
    "gamma": {"prob": 0.0},
}
ALL_OFF = {
    "elastic": {"prob": 0.0},
    "affine": {"prob": 0.0},
    "flip": {"prob": 0.0},
    "noise": {"prob": 0.0},
    "scale_intensity": {"prob": 0.0},
    "gamma": {"prob": 0.0},
}


@pytest.fixture(scope="module")
def slices() -> tuple[torch.Tensor, torch.Tensor]:
    """Padded z-scored image slices (N, 1, H, W) and label slices (N, 1, H, W) with foreground, from sample_data."""
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"
    spec = discover_cases(DataConfig(root=sample, max_cases=2))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
    ds = SliceDataset(data.train)
    idx = np.flatnonzero(ds.foreground)[::2][:24]
    items = [ds[int(i)] for i in idx]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])[:, None].float()
    assert set(torch.unique(labels).tolist()) == {0.0, 1.0, 2.0}
    return images, labels


def _apply(tf, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = tf({"image": image, "label": label})
    return torch.as_tensor(out["image"]), torch.as_tensor(out["label"])


class _PooledDice:
    """Dice over all slices at once (per-slice Dice of tiny structures is noisy)."""

    def __init__(self) -> None:
        self.inter = self.total = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        self.inter += int((a & b).sum())
        self.total += int(a.sum()) + int(b.sum())

    @property
    def value(self) -> float:
        return 2 * self.inter / max(self.total, 1)


def test_augmented_labels_keep_only_original_values(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    cfg = AugmentationConfig.model_validate({**STRONG, "noise": {"prob": 1.0}, "gamma": {"prob": 1.0}})
    tf = train_transforms(cfg, seed=0)
    changed = 0
    for image, label in zip(images, labels, strict=True):
        out_img, out_lab = _apply(tf, image, label)
        assert out_img.shape == image.shape and out_lab.shape == label.shape
        assert set(torch.unique(out_lab).tolist()) <= set(torch.unique(label).tolist())
        assert torch.isfinite(out_img).all()
        changed += int(not torch.equal(out_lab, label))
    assert changed == len(images)  # the transforms really ran


def _label_image(label: torch.Tensor) -> torch.Tensor:
    """An image that *is* the label: channel 0 = foreground * 100, channel c = (label == c) * 100."""
    return torch.cat([(label > 0).float() * 100.0] + [(label == c).float() * 100.0 for c in (1, 2)])


def test_image_made_from_label_stays_aligned(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, labels = slices
    cfg = AugmentationConfig.model_validate(STRONG)
    tf = train_transforms(cfg, seed=1)
    fg, per_class, unmoved, shifted = _PooledDice(), {1: _PooledDice(), 2: _PooledDice()}, _PooledDice(), _PooledDice()
    for label in labels:
        # The image is interpolated bilinearly, the label by nearest neighbour, in one call with one random draw.
        out_img, out_lab = _apply(tf, _label_image(label), label)
        fg.add(out_img[0] > 50, out_lab[0] > 0)
        for c, dice in per_class.items():
            dice.add(out_img[c] > 50, out_lab[0] == c)
        unmoved.add(out_lab[0] > 0, label[0] > 0)
        shifted.add(out_img[0] > 50, torch.roll(out_lab[0] > 0, 1, dims=0))
    assert fg.value > 0.97, fg.value
    for c, dice in per_class.items():
        assert dice.value > 0.95, (c, dice.value)
    # Controls: the labels really moved, and a one-pixel offset would be caught by the threshold above.
    assert unmoved.value < 0.8, unmoved.value
    assert shifted.value < 0.92, shifted.value

    # Image and label deformed by independent draws (two seeds) disagree clearly: the agreement above comes
    # from one random state driving both keys.
    tf_a, tf_b = train_transforms(cfg, seed=2), train_transforms(cfg, seed=3)
    unaligned = _PooledDice()
    for label in labels:
        out_img, _ = _apply(tf_a, _label_image(label), label)
        _, out_lab = _apply(tf_b, _label_image(label), label)
        unaligned.add(out_img[0] > 50, out_lab[0] > 0)
    assert unaligned.value < 0.8, unaligned.value


@pytest.mark.parametrize("cfg", [AugmentationConfig.model_validate(ALL_OFF), AugmentationConfig(enabled=False)])
def test_zero_probabilities_are_identity(slices: tuple[torch.Tensor, torch.Tensor], cfg: AugmentationConfig) -> None:
    images, labels = slices
    tf = train_transforms(cfg, seed=0)
    for image, label in zip(images, labels, strict=True):
        out_img, out_lab = _apply(tf, image, label)
        assert torch.equal(out_img, image) and torch.equal(out_lab, label)


def test_seed_reproduces_and_differs(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    cfg = AugmentationConfig()  # the defaults, all transforms in play
    runs = []
    for seed in (5, 5, 6):
        tf = train_transforms(cfg, seed=seed)
        runs.append(torch.stack([_apply(tf, im, lab)[0] for im, lab in zip(images, labels, strict=True)]))
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_gamma_on_negative_zscores_is_finite_and_keeps_stats(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    assert images.min() < 0  # z-scored input has negative values, which a plain power would turn into NaN
    only_gamma = {**ALL_OFF, "gamma": {"prob": 1.0, "gamma": (0.5, 2.0)}}
    tf = train_transforms(AugmentationConfig.model_validate(only_gamma), seed=0)
    for image, label in zip(images, labels, strict=True):
        out, _ = _apply(tf, image, label)
        assert torch.isfinite(out).all()
        assert not torch.allclose(out, image)
        assert out.mean().item() == pytest.approx(image.mean().item(), abs=1e-3)
        assert out.std().item() == pytest.approx(image.std().item(), rel=1e-3)


def test_dataset_applies_transforms_and_returns_plain_tensors(sample_hippo: Path) -> None:
    spec = discover_cases(DataConfig(root=sample_hippo, max_cases=2))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(context_slices=1), reader=load_volume)
    ds = SliceDataset(data.train, transforms=train_transforms(AugmentationConfig.model_validate(STRONG), seed=0))
    item = ds[int(np.flatnonzero(ds.foreground)[0])]
    assert type(item["image"]) is torch.Tensor and type(item["label"]) is torch.Tensor
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, *ds.patch_hw)
    assert item["label"].dtype == torch.int64 and item["label"].shape == ds.patch_hw
    assert set(torch.unique(item["label"]).tolist()) <= {0, 1, 2}


def test_bad_flip_axis_is_config_error() -> None:
    with pytest.raises(ConfigError, match=r"flip\.axes"):
        train_transforms(AugmentationConfig.model_validate({"flip": {"prob": 0.5, "axes": [2]}}))
