"""Batch augmentation on real hippocampus slices: labels keep their values, image and label stay aligned,
probability 0 is the identity, seeds reproduce, a batch equals its samples one by one, and each transform
gives what MONAI's transform of the same name gives for the same draws."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medseg.config import AugmentationConfig, DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.dataset import SliceDataset
from medseg.data.prepare import prepare_training_data
from medseg.data.transforms import BatchAugmentation, _end_percentiles, _std_mean, train_transforms
from medseg.errors import ConfigError
from medseg.io import load_volume

STRONG = {
    "elastic": {"prob": 1.0, "magnitude": (2.0, 4.0)},
    "affine": {"prob": 1.0, "rotate_deg": 25.0, "scale": 0.2},
    "flip": {"prob": 0.5, "axes": [0, 1]},
    "noise": {"prob": 0.0},
    "scale_intensity": {"prob": 0.0},
    "low_resolution": {"prob": 0.0},
    "gamma": {"prob": 0.0},
    "inverted_gamma": {"prob": 0.0},
    "intensity_curve": {"prob": 0.0},
}
ALL_OFF = {
    "elastic": {"prob": 0.0},
    "affine": {"prob": 0.0},
    "flip": {"prob": 0.0},
    "noise": {"prob": 0.0},
    "scale_intensity": {"prob": 0.0},
    "low_resolution": {"prob": 0.0},
    "gamma": {"prob": 0.0},
    "inverted_gamma": {"prob": 0.0},
    "intensity_curve": {"prob": 0.0},
}


@pytest.fixture(scope="module")
def slices() -> tuple[torch.Tensor, torch.Tensor]:
    """Padded z-scored 2.5D image slices (N, 3, H, W) and int64 label slices (N, H, W) with foreground."""
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus"
    spec = discover_cases(DataConfig(root=sample, max_cases=2))
    data = prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
    ds = SliceDataset(data.train)
    idx = np.flatnonzero(ds.foreground)[::2][:24]
    items = [ds[int(i)] for i in idx]
    images = torch.stack([it["image"] for it in items])
    labels = torch.stack([it["label"] for it in items])
    assert labels.dtype == torch.int64 and set(torch.unique(labels).tolist()) == {0, 1, 2}
    return images, labels


def _apply(tf: BatchAugmentation, image: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = tf({"image": image, "label": label})
    return out["image"], out["label"]


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
    before = images.clone(), labels.clone()
    cfg = AugmentationConfig.model_validate({**STRONG, "noise": {"prob": 1.0}, "gamma": {"prob": 1.0}})
    out_img, out_lab = _apply(train_transforms(cfg, seed=0), images, labels)
    assert out_img.shape == images.shape and out_img.dtype == torch.float32
    assert out_lab.shape == labels.shape and out_lab.dtype == torch.int64
    assert torch.equal(images, before[0]) and torch.equal(labels, before[1])  # the inputs are not modified
    assert torch.isfinite(out_img).all()
    for lab, out in zip(labels, out_lab, strict=True):
        assert set(torch.unique(out).tolist()) <= set(torch.unique(lab).tolist())
    changed = [not torch.equal(a, b) for a, b in zip(out_lab, labels, strict=True)]
    assert all(changed)  # the transforms really ran


def _label_image(labels: torch.Tensor) -> torch.Tensor:
    """Images that *are* the labels: channel 0 = foreground * 100, channel c = (label == c) * 100."""
    return torch.stack([(labels > 0).float() * 100.0] + [(labels == c).float() * 100.0 for c in (1, 2)], dim=1)


def test_image_made_from_label_stays_aligned(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    _, labels = slices
    cfg = AugmentationConfig.model_validate(STRONG)
    # The image is interpolated bilinearly, the label by nearest neighbour, through one grid per sample.
    out_img, out_lab = _apply(train_transforms(cfg, seed=1), _label_image(labels), labels)
    fg, unmoved, shifted = _PooledDice(), _PooledDice(), _PooledDice()
    per_class = {1: _PooledDice(), 2: _PooledDice()}
    fg.add(out_img[:, 0] > 50, out_lab > 0)
    for c, dice in per_class.items():
        dice.add(out_img[:, c] > 50, out_lab == c)
    unmoved.add(out_lab > 0, labels > 0)
    shifted.add(out_img[:, 0] > 50, torch.roll(out_lab > 0, 1, dims=1))
    assert fg.value > 0.97, fg.value
    for c, dice in per_class.items():
        assert dice.value > 0.95, (c, dice.value)
    # Controls: the labels really moved, and a one-pixel offset would be caught by the threshold above.
    assert unmoved.value < 0.8, unmoved.value
    assert shifted.value < 0.92, shifted.value

    # Image and label deformed by independent draws (two seeds) disagree clearly: the agreement above comes
    # from one draw moving both.
    moved_img, _ = _apply(train_transforms(cfg, seed=2), _label_image(labels), labels)
    _, moved_lab = _apply(train_transforms(cfg, seed=3), _label_image(labels), labels)
    unaligned = _PooledDice()
    unaligned.add(moved_img[:, 0] > 50, moved_lab > 0)
    assert unaligned.value < 0.8, unaligned.value


@pytest.mark.parametrize("cfg", [AugmentationConfig.model_validate(ALL_OFF), AugmentationConfig(enabled=False)])
def test_zero_probabilities_are_identity(slices: tuple[torch.Tensor, torch.Tensor], cfg: AugmentationConfig) -> None:
    images, labels = slices
    tf = train_transforms(cfg, seed=0)
    assert tf.is_identity
    out_img, out_lab = _apply(tf, images, labels)
    assert torch.equal(out_img, images) and torch.equal(out_lab, labels)


def test_seed_reproduces_and_differs(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    cfg = AugmentationConfig()  # the defaults, all transforms in play
    runs = [_apply(train_transforms(cfg, seed=seed), images, labels)[0] for seed in (5, 5, 6)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    tf = train_transforms(cfg, seed=7)
    first = _apply(tf, images, labels)[0]
    tf.set_random_state(7)  # reseeding restarts every stream
    assert torch.equal(_apply(tf, images, labels)[0], first)


def test_a_batch_equals_its_samples_one_by_one(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Vectorised arithmetic, per-sample draws: B samples at once = B calls on one sample, same stream."""
    images, labels = slices
    cfg = AugmentationConfig.model_validate(
        {
            **STRONG,
            "elastic": {"prob": 0.5},
            "affine": {"prob": 0.5},
            "noise": {"prob": 0.5},
            "scale_intensity": {"prob": 0.5},
            "low_resolution": {"prob": 0.5},
            "gamma": {"prob": 0.5},
            "inverted_gamma": {"prob": 0.5},
        }
    )
    batch_img, batch_lab = _apply(train_transforms(cfg, seed=11), images, labels)
    tf = train_transforms(cfg, seed=11)
    for k in range(len(images)):
        img, lab = _apply(tf, images[k : k + 1], labels[k : k + 1])
        torch.testing.assert_close(img[0], batch_img[k], rtol=1e-5, atol=1e-4)
        assert torch.equal(lab[0], batch_lab[k])


def test_switching_one_transform_off_keeps_the_others_draws(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    with_noise = AugmentationConfig.model_validate({**ALL_OFF, "affine": {"prob": 0.5}, "noise": {"prob": 1.0}})
    without = AugmentationConfig.model_validate({**ALL_OFF, "affine": {"prob": 0.5}})
    _, lab_a = _apply(train_transforms(with_noise, seed=4), images, labels)
    _, lab_b = _apply(train_transforms(without, seed=4), images, labels)
    assert torch.equal(lab_a, lab_b)


def _monai_reference(
    image: torch.Tensor,
    label: torch.Tensor,
    matrix: np.ndarray,
    offsets: np.ndarray | None,
    spacing: tuple[float, float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One sample through MONAI's own pieces, assembled as ``Rand2DElastic`` / ``RandAffine`` assemble them."""
    from monai.transforms import Affine, CenterSpatialCrop, Resample
    from monai.transforms.utils import create_control_grid

    affine = np.eye(3)
    affine[:2, :2] = matrix
    hw = tuple(image.shape[-2:])
    if offsets is None:
        affine_t = Affine(affine=affine, padding_mode="zeros", image_only=True)
        return (
            torch.as_tensor(affine_t(image, mode="bilinear")),
            torch.as_tensor(affine_t(label[None].float(), mode="nearest"))[0].round().long(),
        )
    control = torch.as_tensor(create_control_grid(hw, spacing, backend="torch"), dtype=torch.float32)
    control[:2] += torch.as_tensor(offsets, dtype=torch.float32)
    control = torch.as_tensor(affine, dtype=torch.float32) @ control.reshape(3, -1)
    control = control.reshape(3, *torch.as_tensor(create_control_grid(hw, spacing)).shape[1:])
    dense = torch.nn.functional.interpolate(
        control[None], scale_factor=spacing, mode="bicubic", align_corners=False, recompute_scale_factor=True
    )
    grid = CenterSpatialCrop(roi_size=hw)(dense[0])
    resample = Resample()
    out_img = resample(image, grid, mode="bilinear", padding_mode="zeros")
    out_lab = resample(label[None].float(), grid, mode="nearest", padding_mode="zeros")
    return torch.as_tensor(out_img), torch.as_tensor(out_lab)[0].round().long()


@pytest.mark.parametrize("elastic_prob", [0.0, 1.0])
def test_spatial_transforms_equal_monai(slices: tuple[torch.Tensor, torch.Tensor], elastic_prob: float) -> None:
    """Given the same draws, the batched grids and resampling give what MONAI's transforms give."""
    images, labels = slices
    cfg = AugmentationConfig.model_validate(
        {
            **ALL_OFF,
            "elastic": {"prob": elastic_prob, "magnitude": (2.0, 4.0)},
            "affine": {"prob": 1.0, "rotate_deg": 25.0, "scale": 0.2},
        }
    )
    tf = train_transforms(cfg, seed=3)
    _, control, _ = tf._base_grids(tuple(images.shape[-2:]))
    draws = tf._draw_spatial(len(images), tuple(control.shape[1:]))  # the draws the call below will make
    tf.set_random_state(3)
    out_img, out_lab = _apply(tf, images, labels)
    agree = []
    for k in range(len(images)):
        offsets = draws.offsets.get(k)
        assert (offsets is not None) == (elastic_prob == 1.0)
        ref_img, ref_lab = _monai_reference(images[k], labels[k], draws.matrices[k], offsets, cfg.elastic.spacing)
        torch.testing.assert_close(out_img[k], ref_img, rtol=1e-3, atol=1e-3)  # float32 vs float64 coordinates
        agree.append(float((out_lab[k] == ref_lab).float().mean()))
    # Nearest neighbour may pick the other pixel where a coordinate lies on a half-pixel (float32 vs float64).
    assert min(agree) > 0.999, min(agree)


@pytest.mark.parametrize("angle", [-0.7, -0.1, 0.0, 0.26, 1.3])
def test_rotate_zoom_is_monais_rotate_times_scale(angle: float) -> None:
    from monai.transforms.utils import create_rotate, create_scale

    from medseg.data.transforms import rotate_zoom

    for zoom in ((1.0, 1.0), (0.85, 1.15), (1.2, 0.9)):
        expected = np.asarray(create_rotate(2, angle)[:2, :2] @ create_scale(2, zoom)[:2, :2], dtype=np.float64)
        np.testing.assert_allclose(rotate_zoom(angle, zoom), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape", [(32, 3, 48, 64), (8, 3, 128, 96), (6, 10, 112, 80)])
def test_a_seeded_batch_is_the_same_with_one_or_two_threads(shape: tuple[int, int, int, int]) -> None:
    """A DataLoader worker augments with one thread, the training process with several: same bits either way
    (at these shapes a mean over threads added in another order, before intensity ran on one thread)."""
    every = {key: {"prob": 0.5} for key in ("elastic", "affine", "noise", "scale_intensity", "gamma")}
    more = {"low_resolution": {"prob": 0.3}, "inverted_gamma": {"prob": 0.3}, "intensity_curve": {"prob": 0.5}}
    cfg = AugmentationConfig.model_validate({**every, **more, "flip": {"prob": 0.5, "axes": [0, 1]}})
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(shape, generator=generator)
    label = torch.randint(0, 3, (shape[0], *shape[2:]), generator=generator)
    previous = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append(train_transforms(cfg, seed=3)({"image": image, "label": label}))
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(outs[0]["image"], outs[1]["image"]) and torch.equal(outs[0]["label"], outs[1]["label"])
    assert not torch.equal(outs[0]["image"], image)


def test_probabilities_and_ranges_are_the_configured_ones() -> None:
    cfg = AugmentationConfig.model_validate(
        {**ALL_OFF, "elastic": {"prob": 0.2}, "affine": {"prob": 0.3, "rotate_deg": 15.0, "scale": 0.15}}
    )
    tf = train_transforms(cfg, seed=0)
    n = 4000
    draws = tf._draw_spatial(n, (4, 5))
    for name, picked, p in (("elastic", draws.elastic, 0.2), ("affine", draws.affine, 0.3)):
        sigma = (p * (1 - p) / n) ** 0.5
        assert abs(len(picked) / n - p) < 4 * sigma, (name, len(picked) / n)
    both = len(set(draws.elastic) & set(draws.affine)) / n
    assert abs(both - 0.06) < 4 * (0.06 * 0.94 / n) ** 0.5  # drawn independently
    angles, zooms = [], []
    for m in draws.matrices.values():  # m = rotate(angle) @ diag(zoom_rows, zoom_cols)
        angles.append(np.degrees(np.arctan2(m[1, 0], m[0, 0])))
        zooms += [np.hypot(m[0, 0], m[1, 0]), np.hypot(m[0, 1], m[1, 1])]
    assert -15 <= min(angles) < -14 and 14 < max(angles) <= 15
    assert 0.85 <= min(zooms) < 0.86 and 1.14 < max(zooms) <= 1.15
    # Control-point moves N(0, 1) * m, m ~ U(1, 2) per sample: their RMS over all samples is sqrt(E[m^2]) = 1.53.
    rms = float(np.sqrt(np.mean([np.mean(o**2) for o in draws.offsets.values()])))
    assert rms == pytest.approx(np.sqrt(7 / 3), rel=0.03)


def test_intensity_probabilities(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    big = images.repeat(50, 1, 1, 1)
    for key, p in (
        ("noise", 0.15),
        ("scale_intensity", 0.15),
        ("low_resolution", 0.25),
        ("gamma", 0.3),
        ("inverted_gamma", 0.1),
        ("intensity_curve", 0.3),
    ):
        cfg = AugmentationConfig.model_validate({**ALL_OFF, key: {"prob": p}})
        out = _apply(train_transforms(cfg, seed=0), big, labels.repeat(50, 1, 1))[0]
        changed = float((out != big).flatten(1).any(dim=1).float().mean())
        assert abs(changed - p) < 4 * (p * (1 - p) / len(big)) ** 0.5, (key, changed)


def test_noise_is_zero_mean_gaussian_with_a_uniform_sigma(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """RandGaussianNoise's distribution: each picked sample gets N(0, s) noise with s ~ U(0, std)."""
    from scipy import stats

    images, labels = slices
    big = images.repeat(100, 1, 1, 1)
    cfg = AugmentationConfig.model_validate({**ALL_OFF, "noise": {"prob": 1.0, "std": 0.2}})
    noise = (_apply(train_transforms(cfg, seed=1), big, labels.repeat(100, 1, 1))[0] - big).flatten(1).double()
    sigmas = noise.std(dim=1).numpy()
    assert 0 < sigmas.min() < 0.01 and 0.19 < sigmas.max() <= 0.2 * 1.05
    assert stats.kstest(sigmas / 0.2, "uniform").pvalue > 1e-3
    assert float(noise.mean(dim=1).abs().max()) < 0.01
    assert stats.normaltest(noise[int(np.argmax(sigmas))].numpy()).pvalue > 1e-3  # Gaussian, not uniform


def test_gamma_on_negative_zscores_is_finite_and_keeps_stats(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    images, labels = slices
    assert images.min() < 0  # z-scored input has negative values, which a plain power would turn into NaN
    only_gamma = {**ALL_OFF, "gamma": {"prob": 1.0, "gamma": (0.5, 2.0)}}
    out, _ = _apply(train_transforms(AugmentationConfig.model_validate(only_gamma), seed=0), images, labels)
    from monai.transforms import AdjustContrast

    for image, result in zip(images, out, strict=True):
        assert torch.isfinite(result).all()
        assert not torch.allclose(result, image)
        assert result.mean().item() == pytest.approx(image.mean().item(), abs=1e-3)
        assert result.std().item() == pytest.approx(image.std().item(), rel=1e-3)
    # The same gamma through MONAI's AdjustContrast(retain_stats=True) gives the same slice.
    tf = train_transforms(AugmentationConfig.model_validate(only_gamma), seed=0)
    rng = tf._rng["gamma"]
    assert rng.random() < 1.0
    gamma = rng.uniform(0.5, 2.0)
    reference = AdjustContrast(gamma=gamma, retain_stats=True)(images[0])
    torch.testing.assert_close(out[0], torch.as_tensor(reference), rtol=1e-4, atol=1e-4)


def test_inverted_gamma_is_monais_invert_image(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each picked sample as MONAI's AdjustContrast(invert_image=True, retain_stats=True) with the same gamma:
    the dark structures are the ones moved, mean and spread kept, labels untouched."""
    from monai.transforms import AdjustContrast

    images, labels = slices
    only = {**ALL_OFF, "inverted_gamma": {"prob": 1.0, "gamma": (0.5, 2.0)}}
    out, out_lab = _apply(train_transforms(AugmentationConfig.model_validate(only), seed=2), images, labels)
    assert torch.equal(out_lab, labels)
    rng = train_transforms(AugmentationConfig.model_validate(only), seed=2)._rng["inverted_gamma"]
    for image, result in zip(images, out, strict=True):
        assert rng.random() < 1.0
        gamma = rng.uniform(0.5, 2.0)
        reference = AdjustContrast(gamma=gamma, invert_image=True, retain_stats=True)(image)
        torch.testing.assert_close(result, torch.as_tensor(reference), rtol=1e-4, atol=1e-4)
        assert result.mean().item() == pytest.approx(image.mean().item(), abs=1e-3)
        assert not torch.allclose(result, image)
    # Not the plain gamma: with the same exponent, plain gamma moves the bright end, inverted gamma the dark end.
    plain = AdjustContrast(gamma=2.0, retain_stats=True)(images[0])
    inverted = AdjustContrast(gamma=2.0, invert_image=True, retain_stats=True)(images[0])
    assert not torch.allclose(torch.as_tensor(plain), torch.as_tensor(inverted), atol=1e-2)


def test_inverted_gamma_leaves_the_other_streams_alone(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Adding the inverted gamma (a stream of its own, spawned last) changes no other transform's draws."""
    images, labels = slices
    base = {**ALL_OFF, "affine": {"prob": 0.5}, "noise": {"prob": 0.5}, "gamma": {"prob": 0.5}}
    with_inv = AugmentationConfig.model_validate({**base, "inverted_gamma": {"prob": 1.0, "gamma": (1.0, 1.0)}})
    img_a, lab_a = _apply(train_transforms(with_inv, seed=9), images, labels)
    img_b, lab_b = _apply(train_transforms(AugmentationConfig.model_validate(base), seed=9), images, labels)
    assert torch.equal(lab_a, lab_b)
    # gamma 1 is the identity up to float rounding, so the images match too.
    torch.testing.assert_close(img_a, img_b, rtol=1e-4, atol=1e-4)


def test_intensity_curve_is_its_piecewise_linear_curve(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each picked sample equals numpy's ``interp`` through its drawn control values, placed evenly over the
    sample's 0.5th-99.5th percentiles (clamped beyond), then given the sample's mean and std again; labels
    untouched."""
    images, labels = slices
    only = {**ALL_OFF, "intensity_curve": {"prob": 1.0, "points": 5}}
    out, out_lab = _apply(train_transforms(AugmentationConfig.model_validate(only), seed=4), images, labels)
    assert torch.equal(out_lab, labels)
    rng = train_transforms(AugmentationConfig.model_validate(only), seed=4)._rng["intensity_curve"]
    for image, result in zip(images, out, strict=True):
        assert rng.random() < 1.0
        values = rng.uniform(0.0, 1.0, size=5)
        x = image.numpy().astype(np.float64)
        lo, hi = np.percentile(x, 0.5, method="lower"), np.percentile(x, 99.5, method="higher")
        y = np.interp(x, np.linspace(lo, hi, 5), values)
        expected = (y - y.mean()) / y.std(ddof=1) * x.std(ddof=1) + x.mean()
        np.testing.assert_allclose(result.numpy(), expected, atol=2e-3)


@pytest.mark.parametrize("shape", [(3, 3, 20, 16), (1, 1, 7, 5), (2, 6, 33, 17)])
def test_end_percentiles_are_numpys_lower_and_higher(shape: tuple[int, ...]) -> None:
    """The curve's range: exactly numpy's 0.5th percentile (``lower``) and 99.5th (``higher``) of each sample,
    ties included (integer-valued samples repeat values)."""
    rng = np.random.default_rng(sum(shape))
    for values in (rng.normal(size=shape), rng.integers(0, 6, size=shape).astype(np.float64)):
        flat = torch.as_tensor(values, dtype=torch.float32).reshape(shape[0], -1)
        lo, hi = _end_percentiles(flat)
        for row, a, b in zip(flat.numpy(), lo[:, 0], hi[:, 0], strict=True):
            assert a.item() == np.percentile(row, 0.5, method="lower")
            assert b.item() == np.percentile(row, 99.5, method="higher")


def test_std_mean_is_torchs() -> None:
    """The retain-stats transforms' per-sample statistics equal ``torch.std_mean`` (Bessel-corrected)."""
    x = torch.as_tensor(np.random.default_rng(3).normal(2.0, 3.0, size=(4, 3, 24, 18)), dtype=torch.float32)
    std, mean = _std_mean(x)
    ref_std, ref_mean = torch.std_mean(x, dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(std, ref_std, rtol=1e-5, atol=0)
    torch.testing.assert_close(mean, ref_mean, rtol=1e-6, atol=1e-6)


def test_intensity_curve_can_reverse_the_brightness_order(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Two control points give a straight line through the percentile range: rising keeps the brightness order,
    falling reverses it (what a dark-blood scan is to a bright-blood one); both kinds are drawn."""
    images, labels = slices
    only = {**ALL_OFF, "intensity_curve": {"prob": 1.0, "points": 2}}
    out, _ = _apply(train_transforms(AugmentationConfig.model_validate(only), seed=5), images, labels)
    corr = [float(np.corrcoef(a.flatten(), b.flatten())[0, 1]) for a, b in zip(images, out, strict=True)]
    # Not exactly +-1: values beyond the 0.5th-99.5th percentiles are clamped to the curve's ends.
    assert all(abs(c) > 0.9 for c in corr)
    assert any(c < 0 for c in corr) and any(c > 0 for c in corr)


def test_intensity_curve_leaves_the_other_streams_alone(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """The curve draws from a stream of its own, spawned last: the spatial and gamma draws stay the same."""
    images, labels = slices
    base = {**ALL_OFF, "affine": {"prob": 0.5}, "gamma": {"prob": 0.5}}
    with_curve = AugmentationConfig.model_validate({**base, "intensity_curve": {"prob": 1.0}})
    tf_a, tf_b = train_transforms(with_curve, seed=9), train_transforms(AugmentationConfig.model_validate(base), seed=9)
    img_a, lab_a = _apply(tf_a, images, labels)
    img_b, lab_b = _apply(tf_b, images, labels)
    assert torch.equal(lab_a, lab_b)
    assert not torch.allclose(img_a, img_b)
    for stream in ("spatial", "gamma"):
        assert tf_a._rng[stream].random() == tf_b._rng[stream].random()


def test_low_resolution_is_monais_and_leaves_labels_alone(slices: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Each sample as MONAI's RandSimulateLowResolution with the same zoom (bilinear down, bicubic up); labels
    untouched."""
    from monai.transforms import RandSimulateLowResolution

    images, labels = slices
    only = {**ALL_OFF, "low_resolution": {"prob": 1.0, "zoom": (0.5, 0.8)}}
    out, out_lab = _apply(train_transforms(AugmentationConfig.model_validate(only), seed=3), images, labels)
    assert torch.equal(out_lab, labels)
    rng = train_transforms(AugmentationConfig.model_validate(only), seed=3)._rng["low_resolution"]
    zooms = []
    for image, result in zip(images, out, strict=True):
        assert rng.random() < 1.0
        zoom = rng.uniform(0.5, 0.8)
        zooms.append(zoom)
        reference = RandSimulateLowResolution(
            prob=1.0, zoom_range=(zoom, zoom), downsample_mode="bilinear", upsample_mode="bicubic"
        )(image)
        torch.testing.assert_close(result, torch.as_tensor(reference), rtol=1e-5, atol=1e-5)
        # Blur: less detail (smaller mean gradient), about the same brightness.
        assert result.diff(dim=-1).abs().mean() < image.diff(dim=-1).abs().mean()
        assert result.mean().item() == pytest.approx(image.mean().item(), abs=0.1)
    assert 0.5 <= min(zooms) < 0.55 and 0.75 < max(zooms) <= 0.8


@pytest.mark.parametrize("zoom", [0.5, 0.6, 0.75, 0.9])
def test_low_resolution_keeps_the_image_where_its_label_is(zoom: float) -> None:
    """A linear ramp comes back as the same ramp, unshifted against the label, at any zoom.

    The ramp rises 1 per column and 0.5 per row, so its mean error is the shift in pixels. torch's legacy
    ``nearest`` down-sampling (MONAI's default) gives -0.75 to -1.09 here; bicubic enlarging ripples by < 0.15.
    """
    h, w = 64, 80
    ramp = torch.arange(w, dtype=torch.float32).expand(h, w) + 0.5 * torch.arange(h, dtype=torch.float32)[:, None]
    images = ramp.expand(2, 1, h, w).clone()
    labels = torch.zeros(2, h, w, dtype=torch.int64)
    only = {**ALL_OFF, "low_resolution": {"prob": 1.0, "zoom": (zoom, zoom)}}
    out, _ = _apply(train_transforms(AugmentationConfig.model_validate(only), seed=0), images, labels)
    inner = (slice(None), slice(None), slice(6, -6), slice(6, -6))  # away from the borders' clamping
    error = out[inner] - images[inner]
    assert abs(error.mean().item()) < 1e-3
    assert error.abs().max().item() < 0.15


@pytest.mark.parametrize("zoom", [(0.0, 1.0), (0.8, 0.5), (0.5, 1.2)])
def test_low_resolution_zoom_outside_0_1_is_refused(zoom: tuple[float, float]) -> None:
    with pytest.raises(ValueError, match=r"zoom must be a range within \(0, 1\]"):
        AugmentationConfig.model_validate({"low_resolution": {"zoom": zoom}})


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
