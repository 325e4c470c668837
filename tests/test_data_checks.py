"""Bad cases (missing label, mismatched label, labels outside the classes, NaN image): an error naming both
files, or with ``skip_bad_cases`` a warning and an entry in the skipped list."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import Case, discover_cases
from medseg.data.checks import check_pair, geometry_mismatch
from medseg.data.prepare import prepare_training_data
from medseg.errors import BadCaseError
from medseg.io import load_volume
from medseg.volume import Volume


def _make_msd(sample_hippo: Path, root: Path, n: int = 3) -> list[str]:
    """Copies the first ``n`` sample cases into an MSD folder; returns their ids."""
    ids = sorted(p.name[: -len(".nii.gz")] for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
        for cid in ids:
            shutil.copy(sample_hippo / sub / f"{cid}.nii.gz", root / sub / f"{cid}.nii.gz")
    training = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "p"}, "training": training}))
    return ids


def _rewrite_label(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> None:
    old = nib.load(path)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), old.affine if affine is None else affine), path)


def _prepare(root: Path, skip: bool) -> tuple[list[str], list[str], object]:
    spec = discover_cases(DataConfig(root=root, skip_bad_cases=skip))
    data = prepare_training_data(
        spec.cases, [], len(spec.classes), PreprocessingConfig(), reader=load_volume, skip_bad_cases=skip
    )
    skipped = [s.id for s in spec.skipped + data.skipped]
    return [p.id for p in data.train], skipped, data


def test_missing_label_is_reported(sample_hippo: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ids = _make_msd(sample_hippo, tmp_path)
    (tmp_path / "labelsTr" / f"{ids[1]}.nii.gz").unlink()
    with pytest.raises(BadCaseError) as err:
        discover_cases(DataConfig(root=tmp_path))
    message = str(err.value)
    assert ids[1] in message and f"imagesTr/{ids[1]}.nii.gz" in message and f"labelsTr/{ids[1]}.nii.gz" in message
    assert "does not exist" in message

    with caplog.at_level(logging.WARNING):
        kept, skipped, _ = _prepare(tmp_path, skip=True)
    assert kept == [ids[0], ids[2]]
    assert skipped == [ids[1]]
    assert any(ids[1] in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_mismatched_label_shape_is_reported(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _make_msd(sample_hippo, tmp_path)
    label_path = tmp_path / "labelsTr" / f"{ids[0]}.nii.gz"
    label = np.asanyarray(nib.load(label_path).dataobj)
    _rewrite_label(label_path, label[:-2])  # two voxels short along i
    with pytest.raises(BadCaseError) as err:
        _prepare(tmp_path, skip=False)
    message = str(err.value)
    assert f"imagesTr/{ids[0]}.nii.gz" in message and f"labelsTr/{ids[0]}.nii.gz" in message
    assert "shape" in message

    kept, skipped, _ = _prepare(tmp_path, skip=True)
    assert kept == ids[1:] and skipped == [ids[0]]


def test_mismatched_label_geometry_is_reported(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _make_msd(sample_hippo, tmp_path)
    label_path = tmp_path / "labelsTr" / f"{ids[2]}.nii.gz"
    old = nib.load(label_path)
    shifted = old.affine.copy()
    shifted[:3, 3] += [0.0, 0.5, 0.0]  # half a voxel: same shape, wrong place
    _rewrite_label(label_path, np.asanyarray(old.dataobj), shifted)
    with pytest.raises(BadCaseError, match="geometry differs") as err:
        _prepare(tmp_path, skip=False)
    assert f"labelsTr/{ids[2]}.nii.gz" in str(err.value) and f"imagesTr/{ids[2]}.nii.gz" in str(err.value)
    kept, skipped, _ = _prepare(tmp_path, skip=True)
    assert kept == ids[:2] and skipped == [ids[2]]


def test_labels_outside_classes_are_reported(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _make_msd(sample_hippo, tmp_path)
    label_path = tmp_path / "labelsTr" / f"{ids[1]}.nii.gz"
    label = np.asanyarray(nib.load(label_path).dataobj).copy()
    label[label == 2] = 7  # dataset.json has 3 classes: 0..2
    _rewrite_label(label_path, label)
    with pytest.raises(BadCaseError, match=r"label values 7 are outside the 3 classes") as err:
        _prepare(tmp_path, skip=False)
    assert f"labelsTr/{ids[1]}.nii.gz" in str(err.value) and f"imagesTr/{ids[1]}.nii.gz" in str(err.value)
    assert "data.unlisted_labels: background reads it as background" in str(err.value)  # a structure not to train
    kept, skipped, data = _prepare(tmp_path, skip=True)
    assert kept == [ids[0], ids[2]] and skipped == [ids[1]]
    assert "outside" in data.skipped[0].reason  # the reason travels to the run's output


def test_a_binary_mask_stored_as_0_255_is_named_as_such() -> None:
    from medseg.data.checks import label_problem

    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 255
    problem = label_problem(mask, 2)
    assert problem is not None and problem.startswith("label values 255 are outside the 2 classes (allowed 0..1)")
    assert "a binary mask stored as 0/255?" in problem and "data.label_values: [0, 255]" in problem
    mask[0, 0, 0] = 1  # 0, 1 and 255: not a plain binary mask, so no guess
    assert "binary mask" not in (label_problem(mask, 2) or "")
    assert label_problem(np.where(mask > 0, 1, 0), 2) is None


def test_non_finite_image_is_reported(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _make_msd(sample_hippo, tmp_path)
    image_path = tmp_path / "imagesTr" / f"{ids[0]}.nii.gz"
    img = nib.load(image_path)
    arr = img.get_fdata().astype(np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, img.affine), image_path)
    with pytest.raises(BadCaseError, match="NaN") as err:
        _prepare(tmp_path, skip=False)
    assert f"imagesTr/{ids[0]}.nii.gz" in str(err.value)
    kept, skipped, _ = _prepare(tmp_path, skip=True)
    assert kept == ids[1:] and skipped == [ids[0]]


def test_dicom_study_without_mask_is_reported(pgbm_dir: Path, tmp_path: Path) -> None:
    spec = discover_cases(DataConfig(root=pgbm_dir, layout="dicom", classes=["bg", "t"]))
    study = spec.cases[1].image.parent  # another study than the one P1 links to
    (tmp_path / "P1" / "study").mkdir(parents=True)
    (tmp_path / "P1" / "study" / spec.cases[0].image.name).symlink_to(spec.cases[0].image, target_is_directory=True)
    (tmp_path / "P2").symlink_to(study, target_is_directory=True)
    cfg = DataConfig(root=tmp_path, layout="dicom", classes=["bg", "t"])
    with pytest.raises(BadCaseError, match="has no label") as err:
        discover_cases(cfg)
    assert "T1post" in str(err.value) and "dicom_mask_pattern" in str(err.value)
    result = discover_cases(cfg.model_copy(update={"skip_bad_cases": True}))
    assert [c.id for c in result.cases] == ["P2"]
    assert [s.id for s in result.skipped] == ["P1_study"]


def test_check_pair_accepts_float_integer_labels_and_rejects_fractions(sample_hippo: Path) -> None:
    image = load_volume(sorted((sample_hippo / "imagesTr").glob("*.nii.gz"))[0])
    case = Case("c", Path("img.nii.gz"), Path("lab.nii.gz"))
    ok = image.with_array(np.zeros(image.shape, dtype=np.float32) + 2.0)
    check_pair(case, image, ok, 3)
    half = image.with_array(np.full(image.shape, 0.5, dtype=np.float32))
    with pytest.raises(BadCaseError, match=r"img\.nii\.gz.*non-integer"):
        check_pair(case, image, half, 3)
    # A flipped axis keeps the shape but moves the corners: caught.
    flipped = Volume(array=ok.array, affine=image.affine @ np.diag([-1.0, 1, 1, 1]))
    assert geometry_mismatch(image, flipped) is not None
