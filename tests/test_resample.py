"""Resampling to the plan's target spacing and back: exact geometry, labels kept, masks on the scan's grid."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.data.normalization import NormalizationParams
from medseg.data.resample import (
    plan_grid,
    resample_image,
    resample_label,
    resample_probabilities_back,
    scaled_target_spacing,
)
from medseg.inference.predictor import ModelSpec, Predictor
from medseg.io import load_volume, save_mask
from medseg.io.orientation import to_canonical
from medseg.models.unet import UNet
from tests.conftest import SHARED_DATA

SPLEEN = SHARED_DATA / "MSD_Spleen_crop"


@pytest.fixture
def spleen() -> tuple[Path, Path]:
    if not SPLEEN.exists():
        pytest.skip(f"needs real data at {SPLEEN} (../shared/data is not part of a fresh clone)")
    return SPLEEN / "spleen_2_img.nii.gz", SPLEEN / "spleen_2_label.nii.gz"


def _box_corners(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    # World positions of the outer corners of the voxel box (index -0.5 and n - 0.5).
    lo, hi = np.full(3, -0.5), np.array(shape[:3]) - 0.5
    corners = np.array([[lo[0], lo[1], lo[2]], [hi[0], hi[1], hi[2]]])
    return corners @ affine[:3, :3].T + affine[:3, 3]


def test_round_trip_on_anisotropic_ct_keeps_geometry_and_labels(spleen: tuple[Path, Path]) -> None:
    image, label = (to_canonical(load_volume(p))[0] for p in spleen)
    grid = plan_grid(image.shape, image.spacing, (1.5, 1.5, 1.0), axis=2)
    assert grid.target_shape[2] == image.shape[2]  # the slice axis is never resampled
    assert grid.target_shape[:2] == (87, 88)  # 164 * 0.795 / 1.5 = 86.9, 166 * 0.795 / 1.5 = 88.0
    # The target grid covers exactly the scan's extent.
    np.testing.assert_allclose(
        _box_corners(grid.target_shape, grid.target_affine(image.affine)),
        _box_corners(image.shape, image.affine),
        atol=1e-6,
    )
    lab = np.asarray(label.array).astype(np.uint8)
    small = resample_label(lab, grid, 2)
    assert small.shape == grid.target_shape and small.dtype == lab.dtype and set(np.unique(small)) == {0, 1}
    # Back via one-hot probabilities (what prediction does): the scan's exact shape, labels nearly unchanged.
    onehot = np.stack([small == 0, small == 1]).astype(np.float32)
    back = resample_probabilities_back(onehot, grid)
    assert back.shape == (2, *image.shape)
    np.testing.assert_allclose(back.sum(axis=0), 1.0, atol=1e-5)
    restored = back.argmax(axis=0)
    dice = 2 * np.sum((restored == 1) & (lab == 1)) / (np.sum(restored == 1) + np.sum(lab == 1))
    assert dice > 0.97
    img_small = resample_image(np.asarray(image.array, dtype=np.float32), grid)
    assert img_small.shape == grid.target_shape and img_small.dtype == np.float32
    # Bicubic, clipped: no intensity outside the scan's own range.
    assert image.array.min() <= img_small.min() and img_small.max() <= image.array.max()


def test_enlarging_a_coarse_scan_bicubically_restores_more_of_the_fine_one(tmp_path: Path) -> None:
    """Why images are bicubic: a real 1 mm scan shrunk to 1.5 mm (as a coarser scanner gives it: the mixed-spacing
    benchmark's own SimpleITK linear resampling) and enlarged back to 1 mm by resample_image is closer to the
    original than bilinear enlargement."""
    from benchmarks.mixed_spacing import resample_file

    scan = Path(__file__).resolve().parents[1] / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz"
    fine = np.asarray(load_volume(scan).array, dtype=np.float32)  # 1 x 1 x 1 mm
    resample_file(scan, tmp_path / "coarse.nii.gz", (1.5, 1.5, 1.0), label=False)
    coarse_volume = load_volume(tmp_path / "coarse.nii.gz")
    coarse = np.asarray(coarse_volume.array, dtype=np.float32)
    back_grid = plan_grid(coarse.shape, coarse_volume.spacing, (1.0, 1.0, 1.0), axis=2)
    assert back_grid.target_shape == fine.shape
    bicubic = resample_image(coarse, back_grid)
    bilinear = (
        torch.nn.functional.interpolate(
            torch.from_numpy(np.moveaxis(coarse, 2, 0)[:, None]), size=fine.shape[:2], mode="bilinear"
        )[:, 0]
        .permute(1, 2, 0)
        .numpy()
    )
    err_cubic, err_linear = (float(np.sqrt(np.mean((x - fine) ** 2))) for x in (bicubic, bilinear))
    assert err_cubic < 0.95 * err_linear, (err_cubic, err_linear)
    assert coarse.min() <= bicubic.min() and bicubic.max() <= coarse.max()  # clipped: no invented intensity


def test_identity_grid_changes_nothing(spleen: tuple[Path, Path]) -> None:
    image = to_canonical(load_volume(spleen[0]))[0]
    arr = np.asarray(image.array, dtype=np.float32)
    grid = plan_grid(image.shape, image.spacing, tuple(float(s) for s in image.spacing), axis=2)
    assert grid.is_identity
    assert resample_image(arr, grid) is arr  # not even a copy: bitwise as before
    lab = np.zeros(image.shape, dtype=np.uint8)
    assert resample_label(lab, grid, 2) is lab
    assert plan_grid(image.shape, image.spacing, None, axis=2).is_identity


#: The spleen CT crop's intensity window (the hippocampus tests use a per-scan z-score).
SPLEEN_CT = NormalizationParams("ct", clip_low=-100.0, clip_high=300.0, mean=100.0, std=50.0)


def _predictor(
    target: tuple[float, float, float] | None,
    batch_size: int = 8,
    *,
    normalization: NormalizationParams = SPLEEN_CT,
    context: int = 0,
    scales: tuple[float, ...] = (1.0,),
) -> Predictor:
    """A seeded, untrained base-4 sigmoid UNet with one foreground class, planned at ``target``."""
    torch.manual_seed(0)
    model = UNet(2 * context + 1, 1, base_features=4)
    spec = ModelSpec(
        classes=("background", "foreground"),
        mode="sigmoid",
        normalization=normalization,
        slice_axis=2,
        context_slices=context,
        patch_hw=(48, 48),
        target_spacing=target,
    )
    return Predictor(model, spec, device="cpu", precision="fp32", batch_size=batch_size, tta_scales=scales)


def test_prediction_on_anisotropic_scan_lands_on_its_grid(spleen: tuple[Path, Path], tmp_path: Path) -> None:
    scan = load_volume(spleen[0])
    predictor = _predictor((1.5, 1.5, 5.0))
    mask, probs = predictor.predict_with_proba(scan)
    assert mask.shape == scan.shape and probs.shape == (2, *scan.shape)
    out = tmp_path / "mask.nii.gz"
    save_mask(mask.array, scan, out)
    ref_nib, got_nib = nib.load(spleen[0]), nib.load(out)
    assert got_nib.shape == ref_nib.shape
    np.testing.assert_allclose(got_nib.affine, ref_nib.affine, atol=1e-5)
    ref_itk, got_itk = sitk.ReadImage(str(spleen[0])), sitk.ReadImage(str(out))
    assert got_itk.GetSize() == ref_itk.GetSize()
    np.testing.assert_allclose(got_itk.GetSpacing(), ref_itk.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(got_itk.GetOrigin(), ref_itk.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(got_itk.GetDirection(), ref_itk.GetDirection(), atol=1e-6)


def test_scan_at_target_spacing_predicts_bitwise_as_without_plan(spleen: tuple[Path, Path]) -> None:
    scan = load_volume(spleen[0])
    at_target = tuple(float(s) for s in to_canonical(scan)[0].spacing)
    with_plan = _predictor(at_target).predict_proba(scan)  # type: ignore[arg-type]
    without = _predictor(None).predict_proba(scan)
    assert np.array_equal(with_plan, without)


def test_old_checkpoint_without_plan_predicts_as_before(tmp_path: Path, sample_hippo: Path) -> None:
    from medseg.training.checkpoint import load_checkpoint, save_checkpoint
    from tests.test_inference import make_checkpoint

    old = make_checkpoint(tmp_path / "old.pt")
    assert "plan" not in load_checkpoint(old)
    scan = load_volume(next(iter(sorted((sample_hippo / "imagesTr").glob("*.nii.gz")))))
    before = Predictor.from_checkpoint(old, device="cpu", precision="fp32")
    assert before.spec.target_spacing is None
    # The same weights with a plan whose target is the scan's spacing: bitwise the same probabilities.
    ckpt = load_checkpoint(old)
    ckpt["plan"] = {"slice_axis": 2, "target_spacing": [1.0, 1.0, 1.0], "patch_size": [48, 48], "batch_size": 32}
    new = save_checkpoint(tmp_path / "new.pt", ckpt)
    after = Predictor.from_checkpoint(new, device="cpu", precision="fp32")
    assert after.spec.target_spacing == (1.0, 1.0, 1.0)
    assert np.array_equal(before.predict_proba(scan), after.predict_proba(scan))
    # A coarser target resamples, and the mask still has the scan's shape.
    ckpt["plan"]["target_spacing"] = [2.0, 2.0, 1.0]
    coarse = Predictor.from_checkpoint(save_checkpoint(tmp_path / "coarse.pt", ckpt), device="cpu", precision="fp32")
    assert coarse.predict(scan).shape == scan.shape


def test_resampled_scan_predicts_slab_by_slab_the_labels_of_the_whole_volume(spleen: tuple[Path, Path]) -> None:
    """predict() resamples each slab's probabilities back and takes its labels there; predict_with_proba()
    resamples the whole probability volume: the same labels, and neither is the identity grid."""
    scan = load_volume(spleen[0])
    predictor = _predictor((1.5, 1.5, 5.0), batch_size=3)  # several slabs, the last one short
    # An untrained head is one class everywhere: centre its bias on the median foreground logit of this scan, so
    # class boundaries run through the volume and the per-slab resampling decides labels.
    fg = predictor.predict_proba(scan)[1]
    median = float(np.clip(np.median(fg), 1e-6, 1 - 1e-6))
    with torch.no_grad():
        predictor.model.output_conv.bias -= float(np.log(median / (1 - median)))
    canon = to_canonical(scan)[0]
    assert not plan_grid(canon.shape, canon.spacing, (1.5, 1.5, 5.0), axis=2).is_identity
    slabwise = predictor.predict(scan)
    whole, _ = predictor.predict_with_proba(scan)
    assert slabwise.shape == scan.shape
    np.testing.assert_array_equal(slabwise.array, whole.array)
    assert 0 < int(np.count_nonzero(slabwise.array)) < slabwise.array.size  # boundaries exercised


# --- test-time scales (inference.tta_scales) -------------------------------------------------------------------


def _hippo_predictor(target: tuple[float, float, float] | None, scales: tuple[float, ...] = (1.0,)) -> Predictor:
    return _predictor(target, 7, normalization=NormalizationParams("zscore"), context=1, scales=scales)


def test_scaled_target_spacing() -> None:
    assert scaled_target_spacing((1.0, 2.0, 3.0), (0.5, 0.5, 0.5), 2, 1.0) == (1.0, 2.0, 3.0)
    assert scaled_target_spacing(None, (0.5, 0.5, 0.5), 2, 1.0) is None
    assert scaled_target_spacing((1.0, 2.0, 3.0), (0.5, 0.5, 0.5), 2, 1.5) == (1.5, 3.0, None)
    # Where the plan keeps the scan's spacing (no target, or a None entry), the scan's own spacing is scaled.
    assert scaled_target_spacing(None, (0.5, 0.8, 5.0), 0, 2.0) == (None, 1.6, 10.0)
    assert scaled_target_spacing((None, 1.0, None), (0.5, 0.8, 5.0), 2, 0.5) == (0.25, 0.5, None)


def test_test_time_scales_average_the_probabilities_on_the_scan_grid(sample_hippo: Path) -> None:
    scan = load_volume(sample_hippo / "imagesTr" / "hippocampus_001.nii.gz")  # 1 mm, at the target
    target = (1.0, 1.0, 1.0)
    plain = _hippo_predictor(target)
    scales = (0.8, 1.0, 1.25)
    tta = _hippo_predictor(target, scales)
    # One scale of 1: bitwise the prediction without test-time scales.
    once = _hippo_predictor(target, (1.0,))
    assert np.array_equal(once.predict_proba(scan), plain.predict_proba(scan))
    # Several: the mean of the predictions at each scaled target (a predictor whose plan says that spacing), each
    # re-sampled back onto the scan's grid.
    per_scale = [_hippo_predictor((s, s, 1.0)).predict_proba(scan) for s in scales]
    probs = tta.predict_proba(scan)
    assert probs.shape == (2, *scan.shape)
    np.testing.assert_allclose(probs, np.mean(per_scale, axis=0), atol=1e-6)
    assert not np.allclose(probs, per_scale[1], atol=1e-3)  # the other scales changed something
    # Centre the untrained head on the median foreground probability so class boundaries run through the scan;
    # the slab-by-slab labels (predict) are then those of the averaged probabilities (predict_with_proba).
    median = float(np.clip(np.median(probs[1]), 1e-6, 1 - 1e-6))
    with torch.no_grad():
        tta.model.output_conv.bias -= float(np.log(median / (1 - median)))
    mask = tta.predict(scan)
    whole, _ = tta.predict_with_proba(scan)
    assert mask.shape == scan.shape
    np.testing.assert_allclose(mask.affine, scan.affine)
    assert (mask.array != whole.array).mean() < 1e-4  # float rounding may move a voxel at exactly 0.5
    assert 0 < int(np.count_nonzero(mask.array)) < mask.array.size


def test_test_time_scales_are_checked(tmp_path: Path) -> None:
    from medseg.config import load_config
    from medseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tta_scales: each scale must be in \[0\.5, 2\]"):
        _hippo_predictor(None, (1.0, 3.0))
    with pytest.raises(ConfigError, match="tta_scales: needs at least one scale"):
        _hippo_predictor(None, ())
    config = tmp_path / "c.yaml"
    config.write_text("data:\n  root: d\ninference:\n  tta_scales: [0.9, 0.1]\n")
    with pytest.raises(ConfigError, match=r"tta_scales.*each scale must be in \[0\.5, 2\], got \[0\.1\]"):
        load_config(config)
    config.write_text("data:\n  root: d\ninference:\n  tta_scales: [0.9, 1.0, 1.1]\n")
    assert load_config(config).inference.tta_scales == [0.9, 1.0, 1.1]
