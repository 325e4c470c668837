"""Labels stored with other values than their class index (``data.label_values``, or gaps in ``dataset.json``):
read exactly, refused when a file holds an undeclared value, and written back as stored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.config import DataConfig, PreprocessingConfig
from medseg.data.cases import discover_cases
from medseg.data.checks import label_problem
from medseg.data.label_reading import LabelReading
from medseg.data.label_values import label_values_problem, to_classes, to_stored, unexpected_values
from medseg.data.prepare import prepare_training_data
from medseg.errors import BadCaseError
from medseg.evaluation import evaluate, match_predictions
from medseg.io import load_volume
from tests.conftest import run_tiny

#: The hippocampus classes (background, anterior, posterior) stored as 0, 100 and 200.
STORED = [0, 100, 200]
AS_STORED = LabelReading(values=tuple(STORED))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models on a shared 2-core machine


def _copy_msd(sample_hippo: Path, root: Path, n: int, values: list[int] | None) -> list[str]:
    """The first ``n`` sample cases as an MSD folder; with ``values``, each label file stores class k as
    ``values[k]`` and ``dataset.json`` declares those values."""
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (sample_hippo / "imagesTr").glob("*.nii.gz"))[:n]
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for cid in ids:
        shutil.copy(sample_hippo / "imagesTr" / f"{cid}.nii.gz", root / "imagesTr" / f"{cid}.nii.gz")
        label = nib.load(sample_hippo / "labelsTr" / f"{cid}.nii.gz")
        classes = np.rint(label.get_fdata()).astype(np.intp)
        stored = np.asarray(values or [0, 1, 2], dtype=np.uint8)[classes]
        nib.save(nib.Nifti1Image(stored, label.affine, label.header), root / "labelsTr" / f"{cid}.nii.gz")
    names = ["background", "Anterior", "Posterior"]
    labels = {str(v): name for v, name in zip(values or [0, 1, 2], names, strict=True)}
    training = [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in ids]
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "modality": {"0": "MRI"}, "training": training}))
    return ids


# ----------------------------------------------------------------------------------------------- the mapping


def test_stored_values_map_to_classes_and_back() -> None:
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 4, size=(9, 8, 7)).astype(np.uint8)
    values = [0, 1, 2, 4]  # BraTS
    stored = to_stored(classes, values)
    assert stored.dtype == np.uint8 and set(np.unique(stored).tolist()) == {0, 1, 2, 4}
    np.testing.assert_array_equal(to_classes(stored, values), classes)
    np.testing.assert_array_equal(to_classes(stored.astype(np.float32), values), classes)  # float label files
    # Declared order is class order, whatever the values' order.
    np.testing.assert_array_equal(to_classes(to_stored(classes, [0, 300, 7, 2]), [0, 300, 7, 2]), classes)
    assert to_stored(classes, [0, 300, 7, 2]).dtype == np.uint16
    assert unexpected_values(stored, [0, 1, 2]).tolist() == [4]
    with pytest.raises(ValueError, match=r"values \[4\] not among \[0, 1, 2\]"):
        to_classes(stored, [0, 1, 2])
    with pytest.raises(ValueError, match=r"values \[-1\.0"):
        to_classes(stored.astype(np.float32) - 1, values)


def test_label_values_are_checked() -> None:
    assert label_values_problem([0, 255]) is None
    assert "differ" in (label_values_problem([0, 1, 1]) or "")
    assert "0..65535" in (label_values_problem([0, 70000]) or "")
    assert "integers" in (label_values_problem([0, 1.5]) or "")  # type: ignore[list-item]
    assert "3 label values [0, 1, 2] for 2 classes" in (label_values_problem([0, 1, 2], 2) or "")
    with pytest.raises(ValueError, match="differ"):
        DataConfig(label_values=[0, 5, 5])
    with pytest.raises(ValueError, match="one value per class"):
        DataConfig(classes=["bg", "a"], label_values=[0, 1, 2])


def test_label_problem_with_stored_values() -> None:
    mask = np.zeros((4, 5, 6), dtype=np.uint8)
    mask[1:3, 1:3, 1:3] = 255
    assert label_problem(mask, 2, [0, 255]) is None
    mask[0, 0, 0] = 1
    assert (label_problem(mask, 2, [0, 255]) or "").startswith(
        "label values 1 are not among data.label_values [0, 255]"
    )
    assert "data.unlisted_labels: background" in (label_problem(mask, 2, [0, 255]) or "")
    assert "non-integer" in (label_problem(mask + 0.5, 2, [0, 255]) or "")


# ----------------------------------------------------------------------------------------- reading a dataset


def test_dataset_json_declares_the_stored_values(sample_hippo: Path, tmp_path: Path) -> None:
    _copy_msd(sample_hippo, tmp_path, 2, STORED)
    spec = discover_cases(DataConfig(root=tmp_path))
    assert spec.classes == ["background", "Anterior", "Posterior"] and spec.label_values == STORED
    # data.label_values overrides what dataset.json declares (a wrong dataset.json needs no edit); identity is None.
    assert discover_cases(DataConfig(root=tmp_path, label_values=[0, 200, 100])).label_values == [0, 200, 100]
    with pytest.raises(Exception, match=r"2 label values \[0, 100\] for 3 classes"):
        discover_cases(DataConfig(root=tmp_path, label_values=[0, 100]))


def test_stored_labels_prepare_exactly_as_class_indices(sample_hippo: Path, tmp_path: Path) -> None:
    _copy_msd(sample_hippo, tmp_path / "plain", 3, None)
    _copy_msd(sample_hippo, tmp_path / "stored", 3, STORED)
    prepared = []
    for name in ("plain", "stored"):
        spec = discover_cases(DataConfig(root=tmp_path / name))
        prepared.append(
            prepare_training_data(
                spec.cases,
                [],
                3,
                PreprocessingConfig(),
                reader=load_volume,
                labels=LabelReading.of(DataConfig(), spec.label_values),
            )
        )
    plain, stored = prepared
    assert plain.plan is not None and stored.plan is not None
    assert plain.plan.to_dict() == stored.plan.to_dict()  # class frequencies and volumes included
    for a, b in zip(plain.train, stored.train, strict=True):
        np.testing.assert_array_equal(a.label, b.label)
        np.testing.assert_array_equal(a.image, b.image)


def test_an_undeclared_value_is_refused_naming_the_file(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _copy_msd(sample_hippo, tmp_path, 2, STORED)
    path = tmp_path / "labelsTr" / f"{ids[1]}.nii.gz"
    label = nib.load(path)
    array = np.asarray(label.dataobj).copy()
    array[array == 200] = 2  # a class index left among stored values
    nib.save(nib.Nifti1Image(array, label.affine, label.header), path)
    spec = discover_cases(DataConfig(root=tmp_path))
    with pytest.raises(BadCaseError, match=r"label values 2 are not among data.label_values \[0, 100, 200\]") as err:
        prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume, labels=AS_STORED)
    assert f"labelsTr/{ids[1]}.nii.gz" in str(err.value)


def test_evaluation_reads_stored_values(sample_hippo: Path, tmp_path: Path) -> None:
    ids = _copy_msd(sample_hippo, tmp_path / "stored", 3, STORED)
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    for cid in ids:  # a "prediction": the label with one anterior slab moved to posterior
        label = nib.load(tmp_path / "stored" / "labelsTr" / f"{cid}.nii.gz")
        array = np.asarray(label.dataobj).copy()
        array[: array.shape[0] // 2][array[: array.shape[0] // 2] == 100] = 200
        nib.save(nib.Nifti1Image(array, label.affine, label.header), pred_dir / f"{cid}.nii.gz")
    classes = ["background", "Anterior", "Posterior"]
    pairs = match_predictions(pred_dir, tmp_path / "stored" / "labelsTr")
    stored = evaluate(pairs, classes, tmp_path / "eval_stored", overlays=0, labels=AS_STORED)
    # The same masks divided by 100, scored as class indices: the same report.
    for folder in (pred_dir, tmp_path / "stored" / "labelsTr"):
        for f in folder.glob("*.nii.gz"):
            img = nib.load(f)
            nib.save(nib.Nifti1Image((np.asarray(img.dataobj) // 100).astype(np.uint8), img.affine, img.header), f)
    plain = evaluate(pairs, classes, tmp_path / "eval_plain", overlays=0)
    assert stored["n_evaluated"] == 3 and stored["classes"] == plain["classes"]
    assert stored["mean_dice"] == pytest.approx(plain["mean_dice"]) and stored["mean_dice"] < 1
    # Undeclared values are a failed case naming the file, as any bad mask.
    failed = evaluate(pairs, classes, tmp_path / "eval_bad", overlays=0, labels=LabelReading(values=(0, 100, 7)))
    assert failed["n_failed"] == 3 and "not among data.label_values [0, 100, 7]" in failed["failed_cases"][0]["error"]


# ------------------------------------------------------------------------------------- a run, end to end


@pytest.mark.slow
def test_a_run_on_stored_values_trains_predicts_and_scores_as_on_indices(sample_hippo: Path, tmp_path: Path) -> None:
    _copy_msd(sample_hippo, tmp_path / "plain", 3, None)
    _copy_msd(sample_hippo, tmp_path / "stored", 3, STORED)
    plain = run_tiny(tmp_path / "run_plain", root=str(tmp_path / "plain"))
    stored = run_tiny(tmp_path / "run_stored", root=str(tmp_path / "stored"))
    a = torch.load(tmp_path / "run_plain" / "checkpoints" / "best.pt", weights_only=True)
    b = torch.load(tmp_path / "run_stored" / "checkpoints" / "best.pt", weights_only=True)
    assert a["label_values"] is None and b["label_values"] == STORED
    for key, value in a["model_state"].items():
        assert torch.equal(value, b["model_state"][key]), key  # the same training, bit for bit
    masks = sorted((tmp_path / "run_stored" / "predictions").glob("*.nii.gz"))
    assert masks
    for mask in masks:  # written as the dataset stores its labels
        written = np.asarray(nib.load(mask).dataobj)
        reference = np.asarray(nib.load(tmp_path / "run_plain" / "predictions" / mask.name).dataobj)
        assert set(np.unique(written).tolist()) <= set(STORED)
        np.testing.assert_array_equal(written, np.asarray(STORED)[reference])
    assert stored.evaluate["mean_dice"] == pytest.approx(plain.evaluate["mean_dice"])
    assert stored.evaluate["classes"] == plain.evaluate["classes"]
    report = (tmp_path / "run_stored" / "report.html").read_text()
    assert "store the classes as background = 0, Anterior = 100, Posterior = 200" in report


# ------------------------------------------------------------------------ a subset of a multi-label set


def test_a_subset_of_totalsegmentator_labels_reads_the_rest_as_background(totalseg_dir: Path, tmp_path: Path) -> None:
    from medseg.data.cases import Case
    from medseg.data.prepare import _CaseReader

    image, seg = totalseg_dir / "example_ct_sm.nii.gz", totalseg_dir / "example_seg.nii.gz"
    stored = np.asarray(nib.load(seg).dataobj)  # 42 values in TotalSegmentator v2 numbering; RAS, as medseg reads
    classes = ["background", "liver", "aorta"]
    subset = LabelReading(values=(0, 5, 52), unlisted_background=True)
    _, label, _ = _CaseReader(load_volume, 3, classes=classes, labels=subset).read(Case("ct", image, seg))
    assert label is not None
    np.testing.assert_array_equal(label, np.select([stored == 5, stored == 52], [1, 2], 0))
    # Refused unless asked, naming the file and some of the values.
    with pytest.raises(BadCaseError, match=r"label values 1, 2, 3, 4, 6, .* are not among data.label_values") as err:
        _CaseReader(load_volume, 3, classes=classes, labels=LabelReading(values=(0, 5, 52))).read(
            Case("ct", image, seg)
        )
    assert "example_seg.nii.gz" in str(err.value)
    # Evaluation reads the ground truth the same way: the liver and aorta of the file itself score 1.
    pred = tmp_path / "pred" / "ct.nii.gz"
    pred.parent.mkdir()
    ref = nib.load(seg)
    nib.save(
        nib.Nifti1Image(np.where(np.isin(stored, [5, 52]), stored, 0).astype(np.uint8), ref.affine, ref.header), pred
    )
    summary = evaluate([("ct", pred, seg, image)], classes, tmp_path / "eval", overlays=0, labels=subset)
    assert summary["n_evaluated"] == 1 and summary["mean_dice"] == pytest.approx(1.0)
    assert DataConfig(unlisted_labels="background").unlisted_labels == "background"
    assert LabelReading.of(DataConfig(unlisted_labels="background"), [0, 5, 52]).describe(classes) == (
        "Label files: classes stored as background=0, liver=5, aorta=52 (predicted masks are written so too); values "
        "other than [0, 5, 52], and segments / ROIs / structures no class names, read as background"
    )
