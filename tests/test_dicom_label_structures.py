"""DICOM SEG / RTSTRUCT labels as clinical exports hold them: more structures than the classes to train (body
outline, couch, planning volumes), read with ``data.unlisted_labels: background``; and, without ``data.classes``,
the classes named by the segments / ROIs themselves."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.config import DataConfig
from medseg.data.cases import discover_cases
from medseg.data.label_reading import LabelReading
from medseg.data.prepare import _CaseReader
from medseg.errors import BadCaseError, ConfigError, ContourOutsideImageError, SegmentNameError
from medseg.io import load_segmentation, load_volume
from medseg.io.rtstruct import save_rtstruct
from medseg.io.segmentation import label_names
from tests.conftest import SAMPLE_DATA

SERIES = SAMPLE_DATA / "dicom" / "HippoCrop_Study1"


def _labels(shape: tuple[int, ...], body: bool) -> np.ndarray:
    """Two small structures ``a`` (1) and ``b`` (2) on a few slices, and optionally a body outline (3) around
    them, as a planning system exports it (the body ROI holds everything; as a label map it is what is left)."""
    labels = np.zeros(shape, np.uint8)
    if body:
        labels[1:-1, 1:-1, 2:-2] = 3
    labels[5:20, 8:30, 6:12] = 1
    labels[22:30, 10:25, 8:14] = 2
    return labels


def _add_couch(path: Path) -> None:
    """Adds a "Couch" ROI whose one contour lies 500 mm beside the image, as a treatment couch often does."""
    ds = pydicom.dcmread(path)
    roi = pydicom.Dataset()
    roi.ROINumber = 99
    roi.ReferencedFrameOfReferenceUID = ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID
    roi.ROIName = "Couch"
    roi.ROIGenerationAlgorithm = "MANUAL"
    ds.StructureSetROISequence.append(roi)
    first = ds.ROIContourSequence[0]
    contour = pydicom.Dataset()
    contour.ReferencedROINumber = 99
    contour.ROIDisplayColor = [128, 128, 128]
    item = pydicom.Dataset()
    item.ContourGeometricType = "CLOSED_PLANAR"
    points = np.asarray(first.ContourSequence[0].ContourData, float).reshape(-1, 3) + np.array([500.0, 0.0, 0.0])
    item.NumberOfContourPoints = len(points)
    item.ContourData = [f"{v:.4f}" for v in points.ravel()]
    contour.ContourSequence = pydicom.Sequence([item])
    ds.ROIContourSequence.append(contour)
    ds.save_as(path)


def test_rtstruct_body_and_couch_rois_are_left_out_on_request(tmp_path: Path) -> None:
    image = load_volume(SERIES)
    labels = _labels(image.shape, body=True)
    path = save_rtstruct(labels, image, tmp_path / "rt.dcm", ["background", "a", "b", "BODY"])
    _add_couch(path)
    assert label_names(path) == ["a", "b", "BODY", "Couch"]

    with pytest.raises(SegmentNameError, match=r"ROI\(s\) 'BODY', 'Couch' match\(es\) none.*unlisted_labels: bac"):
        load_segmentation(path, image, ["background", "a", "b"])
    read = load_segmentation(path, image, ["background", "a", "b"], ignore_unlisted=True)
    np.testing.assert_array_equal(read.array, np.where(labels == 3, 0, labels))  # a and b exactly, body gone
    # The couch's contour is not read when it is left out; asked for, it is refused as outside the image.
    with pytest.raises(ContourOutsideImageError, match="Couch"):
        load_segmentation(path, image, ["background", "a", "b", "Couch"], ignore_unlisted=True)
    # Leaving out does not excuse a class with no ROI.
    with pytest.raises(SegmentNameError, match=r"no ROI\(s\) for class\(es\) \['c'\]"):
        load_segmentation(path, image, ["background", "a", "c"], ignore_unlisted=True)


def test_seg_segments_not_listed_are_left_out_on_request(tmp_path: Path) -> None:
    pytest.importorskip("highdicom", reason="highdicom is in the dicom / dev extras")
    from medseg.io.dicom_seg import save_dicom_seg

    image = load_volume(SERIES)
    labels = _labels(image.shape, body=True)
    path = save_dicom_seg(labels, image, tmp_path / "seg.dcm", ["background", "a", "b", "body"])
    assert label_names(path) == ["a", "b", "body"]
    with pytest.raises(SegmentNameError, match=r"segment\(s\) 'body' match\(es\) none"):
        load_segmentation(path, image, ["background", "b", "a"])
    read = load_segmentation(path, image, ["background", "b", "a"], ignore_unlisted=True)
    np.testing.assert_array_equal(read.array, np.select([labels == 1, labels == 2], [2, 1], 0))  # by name


def _dicom_case(root: Path, case: str, labels: np.ndarray, classes: list[str]) -> None:
    folder = root / case
    folder.mkdir(parents=True)
    shutil.copytree(SERIES, folder / SERIES.name)
    save_rtstruct(labels, load_volume(folder / SERIES.name), folder / "mask_rt.dcm", classes)


def test_dicom_layout_without_classes_names_them_from_the_rois(tmp_path: Path) -> None:
    image = load_volume(SERIES)
    labels = _labels(image.shape, body=False)
    root = tmp_path / "set"
    _dicom_case(root, "p1", labels, ["background", "a", "b"])
    # another planning system drew b first: ROI 1 is b there
    _dicom_case(root, "p2", np.select([labels == 1, labels == 2], [2, 1], 0).astype(np.uint8), ["background", "b", "a"])
    data = DataConfig(root=root, layout="dicom")
    spec = discover_cases(data)
    assert spec.classes == ["background", "a", "b"]
    reader = _CaseReader(load_volume, len(spec.classes), classes=spec.classes)
    read = {case.id: reader.read(case)[1] for case in spec.cases}
    np.testing.assert_array_equal(read["p1"], read["p2"])  # a is class 1 in both, whatever the ROI order
    # a structure drawn as two ROIs of one name (here 'a' and 'A') is one structure, read as their union
    split = labels.copy()
    split[labels == 1] = np.where(np.arange(int((labels == 1).sum())) % 2 == 0, 1, 3)
    _dicom_case(root, "p0", split, ["background", "a", "b", "A"])
    spec = discover_cases(data)
    assert spec.classes == ["background", "a", "b"]
    np.testing.assert_array_equal(reader.read(spec.cases[0])[1], read["p1"])
    shutil.rmtree(root / "p0")

    # A case with a body outline names one more structure: refused with the difference, until the classes are
    # listed and the rest left out.
    shutil.rmtree(root / "p2")
    _dicom_case(root, "p2", _labels(image.shape, body=True), ["background", "a", "b", "BODY"])
    census = r"Of the 2 labelled cases, all name a, b; some name BODY \(1\) \(cases naming each\)"
    with pytest.raises(ConfigError, match=rf"case 'p2' adds BODY against case 'p1'\. {census}.*data.unlisted_labels"):
        discover_cases(data)
    listed = data.model_copy(update={"classes": ["background", "a", "b"], "unlisted_labels": "background"})
    spec = discover_cases(listed)
    reader = _CaseReader(load_volume, 3, classes=spec.classes, labels=LabelReading.of(listed, None))
    np.testing.assert_array_equal(reader.read(spec.cases[1])[1], read["p1"])


def _rt_case(root: Path, case: str, labels: np.ndarray, rois: list[str]) -> None:
    """A case folder whose RTSTRUCT draws ``labels`` value k as ROI ``rois[k - 1]``."""
    _dicom_case(root, case, labels, ["background", *rois])


def test_class_aliases_match_the_names_other_planning_systems_give(tmp_path: Path) -> None:
    image = load_volume(SERIES)
    labels = _labels(image.shape, body=True)
    root = tmp_path / "set"
    _rt_case(root, "p1", np.where(labels == 3, 0, labels).astype(np.uint8), ["Bladder", "Rectum"])
    # the other institution: another name for the bladder, upper case, rectum drawn first, a body outline
    swapped = np.select([labels == 1, labels == 2, labels == 3], [2, 1, 3], 0).astype(np.uint8)
    _rt_case(root, "p2", swapped, ["RECTUM", "Bladder_O", "BODY"])
    classes = ["background", "bladder", "rectum"]
    data = DataConfig(root=root, layout="dicom", classes=classes, unlisted_labels="background")
    spec = discover_cases(data)
    with pytest.raises(BadCaseError, match=r"no ROI\(s\) for class\(es\) \['bladder'\].*Bladder_O.*class_aliases"):
        _CaseReader(load_volume, 3, classes=classes, labels=LabelReading.of(data, None)).read(spec.cases[1])

    aliased = data.model_copy(update={"class_aliases": {"bladder": ["bladder_o", "Vessie"]}})
    reader = _CaseReader(load_volume, 3, classes=classes, labels=LabelReading.of(aliased, None))
    first, second = (reader.read(case)[1] for case in spec.cases)
    np.testing.assert_array_equal(first, second)
    assert set(np.unique(first)) == {0, 1, 2}

    # One file naming the bladder twice (by its name and an alias) cannot be read: which one is the bladder?
    shutil.rmtree(root / "p2")
    _rt_case(root, "p2", swapped, ["Rectum", "Bladder", "bladder_O"])
    with pytest.raises(BadCaseError, match=r"'Bladder', 'bladder_O' all name class 'bladder'"):
        reader.read(discover_cases(aliased).cases[1])


def test_class_aliases_are_checked_against_the_classes() -> None:
    from pydantic import ValidationError

    base = {"root": ".", "classes": ["background", "bladder", "rectum"]}
    DataConfig(**base, class_aliases={"Bladder": ["bladder_o"]})  # keys compare case-insensitively too
    for aliases, message in (
        ({"prostate": ["p"]}, r"names \['prostate'\], which are not foreground classes"),
        ({"bladder": ["rectum"]}, "'rectum' cannot stand for both 'rectum' and 'bladder'"),
        ({"bladder": ["x"], "rectum": ["X"]}, "'X' cannot stand for both 'bladder' and 'rectum'"),
    ):
        with pytest.raises(ValidationError, match=message):
            DataConfig(**base, class_aliases=aliases)
    with pytest.raises(ValidationError, match="class_aliases needs classes"):
        DataConfig(root=".", class_aliases={"bladder": ["b"]})


def test_evaluation_reads_an_rtstruct_ground_truth_by_roi_name(tmp_path: Path) -> None:
    from medseg.evaluation.report import EvalPair, evaluate
    from medseg.io import save_mask

    image = load_volume(SERIES)
    labels = _labels(image.shape, body=True)
    prediction = save_mask(np.where(labels == 3, 0, labels).astype(np.uint8), image, tmp_path / "pred.nii.gz")
    # the ground truth's ROI 1 is b, ROI 2 is a, ROI 3 the body: by number, a and b would swap
    swapped = np.select([labels == 1, labels == 2, labels == 3], [2, 1, 3], 0).astype(np.uint8)
    truth = save_rtstruct(swapped, image, tmp_path / "rt.dcm", ["background", "b", "a", "BODY"])
    pair = EvalPair("p1", prediction, truth, SERIES)
    summary = evaluate(
        [pair], ["background", "a", "b"], tmp_path / "eval", overlays=0, labels=LabelReading(unlisted_background=True)
    )
    assert summary["mean_dice"] == pytest.approx(1.0)
    refused = evaluate([pair], ["background", "a", "b"], tmp_path / "eval2", overlays=0)  # not left out unasked
    assert refused["n_evaluated"] == 0 and "ROI(s) 'BODY' match(es) none" in refused["failed_cases"][0]["error"]


def test_a_series_folder_holding_its_rtstruct_is_a_case(tmp_path: Path) -> None:
    """A planning system's patient export: the slices and the RTSTRUCT (``RS.*.dcm``) in one folder per patient."""
    image = load_volume(SERIES)
    labels = _labels(image.shape, body=False)
    root = tmp_path / "export"
    for patient in ("p1", "p2"):
        shutil.copytree(SERIES, root / patient)
        save_rtstruct(labels, image, root / patient / "RS.1.2.3.dcm", ["background", "a", "b"])
    data = DataConfig(root=root, layout="dicom")
    spec = discover_cases(data)
    assert [(c.id, c.image, c.label) for c in spec.cases] == [
        (p, root / p, root / p / "RS.1.2.3.dcm") for p in ("p1", "p2")
    ]
    assert spec.classes == ["background", "a", "b"]  # from the ROI names
    # read as the same series and RTSTRUCT in the usual layout (series folder and mask side by side) are read
    _dicom_case(tmp_path / "usual", "p1", labels, ["background", "a", "b"])
    reader = _CaseReader(load_volume, 3, classes=spec.classes)
    flat, usual = (
        reader.read(spec.cases[0]),
        reader.read(discover_cases(DataConfig(root=tmp_path / "usual", layout="dicom")).cases[0]),
    )
    np.testing.assert_array_equal(flat[0].array, usual[0].array)  # the RTSTRUCT among the slices is no slice
    np.testing.assert_array_equal(flat[1], usual[1])
    assert flat[1] is not None and int(flat[1].sum()) == int(labels.sum())

    # Two structure sets in one folder (another physician's): the mask pattern picks one, or the case is named.
    save_rtstruct(labels, image, root / "p2" / "RS.review.dcm", ["background", "a", "b"])
    with pytest.raises(BadCaseError, match=r"Case 'p2': the series folder .* holds 2 SEG / RTSTRUCT files \(RS.1.2"):
        discover_cases(data)
    skipped = discover_cases(data.model_copy(update={"skip_bad_cases": True}))
    assert [c.id for c in skipped.cases] == ["p1"] and [s.id for s in skipped.skipped] == ["p2"]
    picked = discover_cases(data.model_copy(update={"dicom_mask_pattern": "*review*"}))
    assert [c.label.name for c in picked.cases] == ["RS.1.2.3.dcm", "RS.review.dcm"]


def _tcia_tree(root: Path) -> np.ndarray:
    """Two patients laid out as a TCIA RT collection: one folder per series (the scan, its RTSTRUCT, an RT dose
    grid and an RT plan, pydicom's test files), none named after a mask pattern."""
    from pydicom.data import get_testdata_file

    image = load_volume(SERIES)
    labels = _labels(image.shape, body=False)
    for patient in ("pat1", "pat2"):
        shutil.copytree(SERIES, root / patient / "1.000000-MR-1234")
        (root / patient / "1.000000-RTSTRUCT-5678").mkdir()
        save_rtstruct(labels, image, root / patient / "1.000000-RTSTRUCT-5678" / "1-1.dcm", ["background", "a", "b"])
        for kind, name in (("RTDOSE", "rtdose.dcm"), ("RTPLAN", "rtplan.dcm")):
            (root / patient / f"1.000000-{kind}-9").mkdir()
            shutil.copy(get_testdata_file(name), root / patient / f"1.000000-{kind}-9" / "1-1.dcm")
    return labels


def test_a_tcia_rt_tree_trains_without_patterns_and_predicts_only_its_scans(tmp_path: Path) -> None:
    from medseg.io import find_scans

    labels = _tcia_tree(tmp_path / "rt")
    # Training: the one scan folder is the image, the one RTSTRUCT beside it the label, whatever their names; the
    # dose and plan folders are no series.
    spec = discover_cases(DataConfig(root=tmp_path / "rt", layout="dicom"))
    assert [(c.id, c.image.name, c.label.name) for c in spec.cases] == [
        (p, "1.000000-MR-1234", "1.000000-RTSTRUCT-5678") for p in ("pat1", "pat2")
    ]
    assert spec.classes == ["background", "a", "b"]
    reader = _CaseReader(load_volume, 3, classes=spec.classes)
    _dicom_case(tmp_path / "usual", "p1", labels, ["background", "a", "b"])
    usual = reader.read(discover_cases(DataConfig(root=tmp_path / "usual", layout="dicom")).cases[0])[1]
    np.testing.assert_array_equal(reader.read(spec.cases[0])[1], usual)

    # Prediction over the tree: the scans, and nothing else, neither as a mask of a dose grid nor as a failure.
    not_scans: list[Path] = []
    assert find_scans(tmp_path / "rt", not_scans=not_scans) == [
        tmp_path / "rt" / p / "1.000000-MR-1234" for p in ("pat1", "pat2")
    ]
    kinds = ["1.000000-RTDOSE-9", "1.000000-RTPLAN-9", "1.000000-RTSTRUCT-5678"]
    assert sorted(p.name for p in not_scans) == sorted(kinds * 2)
    from medseg.inference.batch import discover

    jobs = discover(tmp_path / "rt", tmp_path / "out", "nii.gz")
    assert [(j.case_id, j.problem) for j in jobs] == [("pat1_1.000000-MR-1234", None), ("pat2_1.000000-MR-1234", None)]
    # A dose grid asked for by itself is still read (it is an image; only the search passes it over).
    assert load_volume(tmp_path / "rt" / "pat1" / "1.000000-RTDOSE-9").shape[0] > 1


def _another_series(dst: Path, modality: str) -> None:
    """The sample series as another scan of the same study: own series and instance UIDs, another Modality."""
    from pydicom.uid import generate_uid

    dst.mkdir(parents=True)
    for f in sorted(SERIES.glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[str(dst)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[str(dst), f.name])
        ds.Modality = modality
        ds.save_as(dst / f.name)


def test_a_study_of_several_scans_trains_on_the_one_its_structure_set_was_drawn_on(tmp_path: Path) -> None:
    _tcia_tree(tmp_path / "rt")
    pet = tmp_path / "rt" / "pat1" / "1.000000-PET-4321"
    _another_series(pet, "PT")
    spec = discover_cases(DataConfig(root=tmp_path / "rt", layout="dicom"))
    assert [c.image.name for c in spec.cases] == ["1.000000-MR-1234"] * 2  # the RTSTRUCT references the MR

    # drawn on the PET instead: the PET is the image
    structures = tmp_path / "rt" / "pat1" / "1.000000-RTSTRUCT-5678" / "1-1.dcm"
    image = load_volume(pet)
    save_rtstruct(_labels(image.shape, body=False), image, structures, ["background", "a", "b"], overwrite=True)
    spec = discover_cases(DataConfig(root=tmp_path / "rt", layout="dicom"))
    assert [c.image.name for c in spec.cases] == ["1.000000-PET-4321", "1.000000-MR-1234"]
    # with a pattern, the pattern decides (and reading the RTSTRUCT onto the MR is then refused as foreign)
    spec = discover_cases(DataConfig(root=tmp_path / "rt", layout="dicom", dicom_image_pattern="*MR*"))
    assert [c.image.name for c in spec.cases] == ["1.000000-MR-1234"] * 2
    with pytest.raises(BadCaseError, match=r"does not belong to the series|not in the image series"):
        _CaseReader(load_volume, 3, classes=["background", "a", "b"]).read(spec.cases[0])
