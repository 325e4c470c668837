"""medseg.metrics: cross-checked against MONAI on real hippocampus labels; spacing and empty masks."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from medseg.errors import GeometryMismatchError
from medseg.io import load_volume
from medseg.metrics import (
    METRIC_COLUMNS,
    assd,
    case_metrics,
    class_voxel_counts,
    dice,
    hd95,
    iou,
    surface_dice,
    surface_distances,
    volume_ml,
)

CLASSES = ["background", "Anterior", "Posterior"]


@pytest.fixture(params=["sample_data", "shared"])
def label_files(request: pytest.FixtureRequest) -> list[Path]:
    """Two real hippocampus label files: from sample_data/ (always there) and from ../shared/data (when present).

    The shared pair is taken from the end of the sorted list, i.e. cases the sample subset does not start with.
    """
    if request.param == "shared":
        files = sorted((request.getfixturevalue("hippo_dir") / "labelsTr").glob("*.nii.gz"))
        assert len(files) >= 2
        return files[-2:]
    files = sorted((request.getfixturevalue("sample_hippo") / "labelsTr").glob("*.nii.gz"))
    assert len(files) >= 2, "sample_data/hippocampus/labelsTr should hold real labels"
    return files[:2]


@pytest.fixture
def one_torch_thread():
    """MONAI's metrics loop over tiny tensors; on a shared 2-core box extra torch threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _fit(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Another case's label map cropped / zero-padded (centred) to ``shape``: a plausible but poor prediction."""
    out = np.zeros(shape, dtype=labels.dtype)
    src, dst = [], []
    for n_src, n_dst in zip(labels.shape, shape, strict=True):
        n = min(n_src, n_dst)
        a, b = (n_src - n) // 2, (n_dst - n) // 2
        src.append(slice(a, a + n))
        dst.append(slice(b, b + n))
    out[tuple(dst)] = labels[tuple(src)]
    return out


def _perturbations(gt: np.ndarray, other: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "eroded": np.where(ndimage.binary_erosion(gt > 0), gt, 0),
        "dilated": ndimage.grey_dilation(gt, size=(3, 3, 3)),
        "shifted": ndimage.shift(gt, (1, -2, 1), order=0, mode="constant", cval=0),
        "other_case": _fit(other, gt.shape),
    }


def _onehot(labels: np.ndarray, n: int) -> torch.Tensor:
    return torch.from_numpy(np.stack([labels == i for i in range(n)])[None].astype(np.float32))


def _monai(pred: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...]) -> dict[str, np.ndarray]:
    from monai.metrics import DiceMetric, HausdorffDistanceMetric, SurfaceDistanceMetric, compute_surface_dice

    p, g = _onehot(pred, len(CLASSES)), _onehot(gt, len(CLASSES))
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "dice": DiceMetric(include_background=False, reduction="none")(p, g)[0].numpy(),
            "hd95_mm": HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
                p, g, spacing=sp
            )[0].numpy(),
            "assd_mm": SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")(
                p, g, spacing=sp
            )[0].numpy(),
            # Normalised surface Dice at medseg's default 1 mm and at 2 mm (a tolerance per class).
            **{
                f"nsd_{t:g}": compute_surface_dice(p, g, [t] * (len(CLASSES) - 1), spacing=sp)[0].numpy()
                for t in (1.0, 2.0)
            },
        }


@pytest.mark.usefixtures("one_torch_thread")
def test_metrics_equal_monai_on_real_label_pairs(label_files: list[Path]) -> None:
    volumes = [load_volume(f) for f in label_files]
    compared = 0
    for n, vol in enumerate(volumes):
        gt = np.asarray(vol.array).astype(np.int64)
        other = np.asarray(volumes[(n + 1) % len(volumes)].array).astype(np.int64)
        # The file's own spacing and a strongly anisotropic one: both must match MONAI given spacing=.
        for spacing in (tuple(vol.spacing), (0.8, 1.2, 3.0)):
            for name, pred in _perturbations(gt, other).items():
                rows = case_metrics(pred, gt, spacing, CLASSES)
                rows_2mm = case_metrics(pred, gt, spacing, CLASSES, nsd_tolerance_mm=2.0)
                ref = _monai(pred, gt, spacing)
                for c, row in enumerate(rows):
                    where = f"{label_files[n].name} {name} spacing={spacing} class={row['class']}"
                    assert row["flag"] == "", where
                    assert row["dice"] == pytest.approx(ref["dice"][c], abs=1e-4), where
                    assert row["hd95_mm"] == pytest.approx(ref["hd95_mm"][c], abs=1e-3), where
                    assert row["assd_mm"] == pytest.approx(ref["assd_mm"][c], abs=1e-3), where
                    assert row["nsd"] == pytest.approx(ref["nsd_1"][c], abs=1e-6), where
                    assert rows_2mm[c]["nsd"] == pytest.approx(ref["nsd_2"][c], abs=1e-6), where
                    assert rows_2mm[c]["nsd"] >= row["nsd"], where  # a wider tolerance accepts more
                    compared += 1
                # The perturbations are real disagreements, not near-identities that any formula would pass.
                assert min(r["dice"] for r in rows) < 0.99
    assert compared == len(volumes) * 2 * 4 * 2


def test_single_mask_functions_agree_with_case_metrics(label_files: list[Path]) -> None:
    vol = load_volume(label_files[0])
    gt = np.asarray(vol.array) == 1
    pred = ndimage.binary_dilation(gt)
    sp = vol.spacing
    row = case_metrics(pred.astype(np.uint8), gt.astype(np.uint8), sp, ["bg", "fg"])[0]
    assert list(row) == list(METRIC_COLUMNS)
    assert row["dice"] == dice(pred, gt)
    assert row["iou"] == iou(pred, gt)
    assert row["hd95_mm"] == hd95(pred, gt, sp)
    assert row["assd_mm"] == assd(pred, gt, sp)
    assert row["nsd"] == surface_dice(pred, gt, sp, tolerance_mm=1.0)
    # Dice and IoU are tied by J = D / (2 - D) for any pair of masks.
    assert row["iou"] == pytest.approx(row["dice"] / (2 - row["dice"]), abs=1e-12)
    assert row["vol_gt_ml"] == pytest.approx(gt.sum() * np.prod(sp) / 1000)
    assert row["vol_diff_ml"] == pytest.approx(row["vol_pred_ml"] - row["vol_gt_ml"])
    assert row["vol_diff_ml"] > 0  # dilation grows the structure


@pytest.mark.usefixtures("one_torch_thread")
def test_anisotropic_spacing_scales_distances_along_its_axis() -> None:
    gt = np.zeros((20, 20, 12), dtype=bool)
    gt[5:15, 6:14, 3:8] = True
    shifted_k = np.roll(gt, 1, axis=2)  # one voxel along the 3rd axis
    shifted_i = np.roll(gt, 1, axis=0)  # one voxel along the 1st axis

    # The classic Hausdorff distance of a one-voxel shift is exactly one voxel, in mm of that axis.
    assert hd95(shifted_k, gt, (1, 1, 1), percentile=100) == pytest.approx(1.0)
    assert hd95(shifted_k, gt, (1, 1, 3), percentile=100) == pytest.approx(3.0)
    assert hd95(shifted_i, gt, (1, 1, 3), percentile=100) == pytest.approx(1.0)
    assert hd95(shifted_i, gt, (2.5, 1, 1), percentile=100) == pytest.approx(2.5)

    # Same voxels, coarser 3rd axis: distances along it grow, Dice (a voxel count) does not.
    assert hd95(shifted_k, gt, (1, 1, 3)) > hd95(shifted_k, gt, (1, 1, 1))
    assert assd(shifted_k, gt, (1, 1, 3)) > assd(shifted_k, gt, (1, 1, 1))
    assert dice(shifted_k, gt) == pytest.approx(4 / 5)
    assert volume_ml(gt, (1, 1, 3)) == pytest.approx(3 * volume_ml(gt, (1, 1, 1)))
    # And MONAI agrees with the anisotropic numbers.
    ref = _monai(shifted_k.astype(np.int64), gt.astype(np.int64), (1.0, 1.0, 3.0))
    assert hd95(shifted_k, gt, (1, 1, 3)) == pytest.approx(ref["hd95_mm"][0], abs=1e-3)
    assert assd(shifted_k, gt, (1, 1, 3)) == pytest.approx(ref["assd_mm"][0], abs=1e-3)


def test_anisotropic_spacing_on_a_real_label(label_files: list[Path]) -> None:
    gt = np.asarray(load_volume(label_files[0]).array) > 0
    pred = ndimage.shift(gt, (0, 0, 1), order=0)  # one slice along the 3rd axis
    d_iso = np.concatenate(surface_distances(pred, gt, (1, 1, 1)))
    d_aniso = np.concatenate(surface_distances(pred, gt, (1, 1, 3)))
    # Same surface voxels in the same order; stretching the 3rd axis 3x stretches every distance by 1x..3x.
    assert d_iso.shape == d_aniso.shape
    assert np.all(d_aniso >= d_iso - 1e-9) and np.all(d_aniso <= 3 * d_iso + 1e-9)
    # Voxels on the caps of the shift are one slice away: 1 mm isotropic, 3 mm once slices are 3 mm apart.
    assert np.any(np.isclose(d_iso, 1.0)) and np.any(np.isclose(d_aniso, 3.0))
    assert hd95(pred, gt, (1, 1, 3)) > hd95(pred, gt, (1, 1, 1))
    assert assd(pred, gt, (1, 1, 3)) > assd(pred, gt, (1, 1, 1))


def test_empty_masks_are_flagged_with_documented_values() -> None:
    gt = np.zeros((10, 10, 10), dtype=np.uint8)
    gt[2:5, 2:5, 2:5] = 1  # class 1 only in gt; class 2 nowhere; class 3 only in pred
    pred = np.zeros_like(gt)
    pred[6:9, 6:9, 6:9] = 3
    rows = {r["class"]: r for r in case_metrics(pred, gt, (1, 1, 2), ["bg", "a", "b", "c"])}

    assert rows["a"]["flag"] == "pred_empty"
    assert rows["b"]["flag"] == "both_empty"
    assert rows["c"]["flag"] == "gt_empty"
    assert rows["b"]["dice"] == 1.0 and rows["b"]["iou"] == 1.0
    for name in ("a", "c"):
        assert rows[name]["dice"] == 0.0 and rows[name]["iou"] == 0.0
    for row in rows.values():
        assert math.isnan(row["hd95_mm"]) and math.isnan(row["assd_mm"])
    # The surface Dice follows the Dice: 1 where both masks are empty, 0 where one is.
    assert rows["b"]["nsd"] == 1.0 and rows["a"]["nsd"] == 0.0 and rows["c"]["nsd"] == 0.0
    skipped = {r["class"]: r for r in case_metrics(pred, gt, (1, 1, 2), ["bg", "a", "b", "c"], skip_both_empty=True)}
    assert math.isnan(skipped["b"]["nsd"]) and skipped["a"]["nsd"] == 0.0
    assert rows["a"]["vol_gt_ml"] == pytest.approx(27 * 2 / 1000)
    assert rows["a"]["vol_diff_ml"] == pytest.approx(-27 * 2 / 1000)
    assert rows["c"]["vol_pred_ml"] == pytest.approx(27 * 2 / 1000)

    empty = np.zeros((4, 4, 4), dtype=bool)
    assert dice(empty, empty) == 1.0 and iou(empty, empty) == 1.0
    assert math.isnan(hd95(empty, empty)) and math.isnan(assd(empty, empty))
    assert math.isnan(hd95(empty, gt[:4, :4, :4] > 0))


def test_overlapping_masks_with_full_agreement() -> None:
    gt = np.zeros((8, 9, 10), dtype=np.uint8)
    gt[1:7, 2:8, 0:10] = 1  # touches the array border along the 3rd axis: border voxels are surface
    row = case_metrics(gt, gt, (0.5, 0.5, 2.0), ["bg", "fg"])[0]
    assert row["dice"] == 1.0 and row["iou"] == 1.0
    assert row["hd95_mm"] == 0.0 and row["assd_mm"] == 0.0 and row["nsd"] == 1.0
    assert row["flag"] == ""


def test_surface_dice_counts_the_surface_within_the_tolerance() -> None:
    gt = np.zeros((20, 20, 12), dtype=bool)
    gt[5:15, 6:14, 3:8] = True
    shifted_k = np.roll(gt, 1, axis=2)  # one slice along the 3rd axis, slices 3 mm apart
    d_pred, d_gt = surface_distances(shifted_k, gt, (1, 1, 3))
    d = np.concatenate([d_pred, d_gt])
    # 512 surface voxels: 256 on both surfaces (the sides), the caps' 256 at 1, 2 (in-plane, near a side) or 3 mm.
    assert d.size == 512 and np.unique(d).tolist() == [0.0, 1.0, 2.0, 3.0]
    for tolerance, expected in ((0.0, 256), (1.0, 304), (2.9, 336), (3.0, 512)):
        assert (d <= tolerance).sum() == expected
        assert surface_dice(shifted_k, gt, (1, 1, 3), tolerance_mm=tolerance) == expected / 512
    with pytest.raises(ValueError, match="tolerance_mm"):
        surface_dice(gt, gt, tolerance_mm=-1.0)


def test_the_surface_tolerance_default_is_one_fact() -> None:
    from medseg.config import EvaluationConfig
    from medseg.metrics import NSD_TOLERANCE_MM

    assert EvaluationConfig().surface_tolerance_mm == NSD_TOLERANCE_MM


def test_two_dimensional_masks_work() -> None:
    gt = np.zeros((30, 30), dtype=bool)
    gt[10:20, 10:20] = True
    pred = np.roll(gt, 2, axis=1)
    assert hd95(pred, gt, (1.0, 0.5), percentile=100) == pytest.approx(1.0)
    assert dice(pred, gt) == pytest.approx(0.8)


def test_bad_inputs_raise() -> None:
    a = np.zeros((4, 4, 4), dtype=bool)
    b = np.zeros((4, 4, 5), dtype=bool)
    with pytest.raises(GeometryMismatchError):
        dice(a, b)
    with pytest.raises(GeometryMismatchError):
        case_metrics(a, b, (1, 1, 1), CLASSES)
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1, 1))
    with pytest.raises(ValueError, match="spacing"):
        assd(a, a, (1, 0, 1))
    with pytest.raises(ValueError, match="percentile"):
        hd95(a, a, percentile=120)
    with pytest.raises(ValueError, match="foreground"):
        case_metrics(a, a, (1, 1, 1), ["background"])


def test_class_voxel_counts_equal_bincount_on_real_labels(label_files: list[Path]) -> None:
    """Counts of a real label file, as stored (uint8) and as floats (QC's reference reads labels that way)."""
    for path in label_files:
        labels = np.asarray(load_volume(path).array)
        expected = np.bincount(labels.astype(np.int64).ravel(), minlength=len(CLASSES))
        assert np.array_equal(class_voxel_counts(labels, len(CLASSES)), expected)
        assert np.array_equal(class_voxel_counts(labels.astype(np.float32), len(CLASSES)), expected)


@pytest.mark.parametrize("n_classes", [2, 16, 17, 105])
def test_class_voxel_counts_both_paths(n_classes: int) -> None:
    """Per-class comparison (<= 16 classes) and bincount (more) agree with a reference count; values outside
    0 .. n-1 are not counted; a Fortran-ordered array is counted as it is."""
    rng = np.random.default_rng(n_classes)
    labels = np.asfortranarray(rng.integers(-1, n_classes + 2, size=(20, 18, 7)).astype(np.int16))
    counts = class_voxel_counts(labels, n_classes)
    assert counts.dtype == np.int64 and counts.shape == (n_classes,)
    assert np.array_equal(counts, [int((labels == c).sum()) for c in range(n_classes)])
