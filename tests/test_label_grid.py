"""Labels saved on another voxel grid than their image's: placed exactly when their voxels are the image's (cut to
their extent, as 3D Slicer saves segmentations, or in another axis order), refused otherwise. The cut and
reordered files are written by SimpleITK, an independent tool that keeps each voxel's position in space."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseg.data.cases import Case
from medseg.data.checks import GEOMETRY_TOLERANCE
from medseg.data.label_grid import label_on_image_grid, place_on_grid
from medseg.data.label_reading import LabelReading
from medseg.data.prepare import _CaseReader
from medseg.errors import BadCaseError
from medseg.evaluation import evaluate
from medseg.io import load_volume
from medseg.volume import Volume


def _first_case(sample_hippo: Path) -> tuple[Path, Path]:
    image = sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[0]
    return image, sample_hippo / "labelsTr" / image.name


def _cut_to_extent(label: Path, out: Path, margin: int = 2) -> Path:
    """The label cut to its foreground's bounding box plus ``margin`` voxels, as 3D Slicer saves a segmentation."""
    img = sitk.ReadImage(str(label))
    fg = np.argwhere(sitk.GetArrayViewFromImage(img) > 0)  # (k, j, i) order
    lo = np.maximum(fg.min(axis=0)[::-1] - margin, 0)
    hi = np.minimum(fg.max(axis=0)[::-1] + margin, np.array(img.GetSize()) - 1)
    sitk.WriteImage(sitk.RegionOfInterest(img, (hi - lo + 1).tolist(), lo.tolist()), str(out))
    return out


def _read(image: Path, label: Path, place_cut: bool = False) -> np.ndarray:
    reader = _CaseReader(load_volume, 3, labels=LabelReading(place_cut=place_cut))
    _, array, _ = reader.read(Case("case", image, label))
    assert array is not None
    return array


def test_a_label_cut_to_its_extent_is_placed_exactly(sample_hippo: Path, tmp_path: Path) -> None:
    image, label = _first_case(sample_hippo)
    cut = _cut_to_extent(label, tmp_path / "cut.seg.nrrd")
    assert nib.load(label).shape != sitk.ReadImage(str(cut)).GetSize()[::-1]  # really another grid
    np.testing.assert_array_equal(_read(image, cut, place_cut=True), _read(image, label))
    # Only when asked: with headers that carry no position, a truncated label would fit as well.
    with pytest.raises(BadCaseError, match=r"covers image voxels .* Set data.place_cut_labels: true"):
        _read(image, cut)


@pytest.mark.parametrize(("flip", "order"), [((True, False, False), (0, 1, 2)), ((False, True, True), (2, 0, 1))])
def test_a_label_in_another_axis_order_is_placed_exactly(
    sample_hippo: Path, tmp_path: Path, flip: tuple[bool, ...], order: tuple[int, ...]
) -> None:
    image, label = _first_case(sample_hippo)
    # SimpleITK's Flip and PermuteAxes move the origin and direction with the voxels: the same label in space.
    moved = sitk.PermuteAxes(sitk.Flip(sitk.ReadImage(str(label)), list(flip)), list(order))
    sitk.WriteImage(moved, str(tmp_path / "moved.nii.gz"))
    np.testing.assert_array_equal(_read(image, tmp_path / "moved.nii.gz"), _read(image, label))
    # Cut and reordered at once.
    cut = _cut_to_extent(tmp_path / "moved.nii.gz", tmp_path / "moved_cut.nrrd", margin=0)
    np.testing.assert_array_equal(_read(image, cut, place_cut=True), _read(image, label))


def test_a_label_off_the_image_grid_is_still_refused(sample_hippo: Path, tmp_path: Path) -> None:
    image, label = _first_case(sample_hippo)
    img = sitk.ReadImage(str(label))
    img.SetOrigin(tuple(o + 0.5 * s for o, s in zip(img.GetOrigin(), img.GetSpacing(), strict=True)))  # half a voxel
    sitk.WriteImage(img, str(tmp_path / "shifted.nii.gz"))
    with pytest.raises(BadCaseError, match="geometry differs"):
        _read(image, tmp_path / "shifted.nii.gz", place_cut=True)
    coarse = sitk.ReadImage(str(label))
    coarse.SetSpacing(tuple(2 * s for s in coarse.GetSpacing()))
    sitk.WriteImage(coarse, str(tmp_path / "coarse.nii.gz"))
    with pytest.raises(BadCaseError, match="geometry differs"):
        _read(image, tmp_path / "coarse.nii.gz", place_cut=True)


def test_labelled_voxels_outside_the_image_are_refused() -> None:
    image = Volume(np.zeros((4, 5, 6), np.float32), np.diag([1.0, 1.0, 2.0, 1.0]))
    affine = image.affine.copy()
    affine[:3, 3] = [-2.0, 0.0, 0.0]  # two voxels before the image along i
    label = np.zeros((8, 5, 6), np.uint8)
    label[2:6, 1, 1] = 1  # inside the image (image i = 0..3)
    placed = place_on_grid(Volume(label, affine), image, GEOMETRY_TOLERANCE)
    assert placed is not None and placed.volume.same_grid(image)
    assert placed.box == [[-2, 5], [0, 4], [0, 5]] and not placed.whole and placed.outside == 0
    np.testing.assert_array_equal(placed.volume.array, label[2:6])
    label[0, 1, 1] = 1  # image i = -2
    with pytest.raises(ValueError, match="1 labelled voxels lie outside the image"):
        label_on_image_grid(Volume(label, affine), image, GEOMETRY_TOLERANCE, place_cut=True)


def test_evaluation_places_a_cut_ground_truth(sample_hippo: Path, tmp_path: Path) -> None:
    image, label = _first_case(sample_hippo)
    pred = tmp_path / "pred" / label.name
    pred.parent.mkdir()
    lab = nib.load(label)
    moved = np.rint(lab.get_fdata()).astype(np.uint8)
    moved = np.roll(moved, 1, axis=0)  # a prediction one voxel off: Dice below 1
    nib.save(nib.Nifti1Image(moved, lab.affine, lab.header), pred)
    cut = _cut_to_extent(label, tmp_path / "cut.nrrd")
    classes = ["background", "Anterior", "Posterior"]
    full = evaluate([("case", pred, label, image)], classes, tmp_path / "full", overlays=0)
    placed = evaluate(
        [("case", pred, cut, image)], classes, tmp_path / "cut", overlays=0, labels=LabelReading(place_cut=True)
    )
    refused = evaluate([("case", pred, cut, image)], classes, tmp_path / "refused", overlays=0)
    assert "set data.place_cut_labels: true" in refused["failed_cases"][0]["error"]
    assert placed["n_evaluated"] == 1 and 0 < placed["mean_dice"] < 1
    assert placed["mean_dice"] == pytest.approx(full["mean_dice"])
    assert placed["classes"] == full["classes"]


def test_a_cut_label_of_an_oblique_dicom_series_is_placed_exactly(pgbm_dir: Path, tmp_path: Path) -> None:
    from medseg.io import save_mask

    study = next(p for p in sorted(pgbm_dir.glob("PGBM-001/*")) if p.is_dir())
    series, mask_series = next(study.glob("*T1post*")), next(study.glob("*MaskTumor*"))
    image = load_volume(series)
    assert abs(image.affine[0, 2]) > 0.1  # oblique: the slice axis is tilted
    full = save_mask((load_volume(mask_series).array > 0).astype(np.uint8), image, tmp_path / "full.nii.gz")
    cut = _cut_to_extent(full, tmp_path / "cut.seg.nrrd")  # float64 DICOM geometry against a NRRD header
    np.testing.assert_array_equal(_read(series, cut, place_cut=True), _read(series, full))


def test_a_cut_sparse_label_leaves_the_uncovered_voxels_unannotated(sample_hippo: Path, tmp_path: Path) -> None:
    # With an ignore label, voxels a cut label does not cover were never drawn: unannotated, not background.
    image, label = _first_case(sample_hippo)
    cut = _cut_to_extent(label, tmp_path / "cut.nii.gz")
    reader = _CaseReader(load_volume, 3, labels=LabelReading(place_cut=True, ignore=255))
    _, placed, _ = reader.read(Case("case", image, cut))
    full = _read(image, label)
    assert placed is not None
    covered = placed != 3  # index n_classes: unannotated
    assert 0 < covered.sum() < covered.size
    np.testing.assert_array_equal(placed[covered], full[covered])  # the drawn box, voxel for voxel
    assert (full[~covered] == 0).all()  # outside the box the complete label is background: nothing lost
