"""Batch prediction with DICOM outputs: a SEG / RTSTRUCT per DICOM series, the NIfTI copy, NIfTI inputs refused,
and DICOM SEG / RTSTRUCT files (or a folder holding one) as labels in data.layout dicom."""

from __future__ import annotations

import csv
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medseg.config import DataConfig
from medseg.data.cases import discover_cases
from medseg.inference.batch import predict_folder
from medseg.inference.predictor import Predictor
from medseg.io import load_segmentation, load_volume, save_mask
from medseg.io.dicom_seg import DicomWriteOptions, save_dicom_seg
from medseg.io.rtstruct import save_rtstruct
from tests.conftest import SAMPLE_DATA
from tests.test_inference import make_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

pytest.importorskip("highdicom", reason="highdicom is in the dicom / dev extras")
SERIES = SAMPLE_DATA / "dicom" / "HippoCrop_Study1"


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    return Predictor.from_checkpoint(
        make_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt"), device="cpu", precision="fp32"
    )


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    shutil.copytree(SERIES, root / "S1")
    shutil.copy(SAMPLE_DATA / "hippocampus" / "imagesTr" / "hippocampus_001.nii.gz", root / "h1.nii.gz")
    return root


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["case"]: r for r in csv.DictReader(f)}


@pytest.mark.parametrize("fmt", ["dicom-seg", "rtstruct"])
def test_batch_writes_a_dicom_object_per_series_and_the_nifti_copy(
    fmt: str, predictor: Predictor, inputs: Path, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    result = predict_folder(
        predictor,
        inputs,
        out,
        output_format=fmt,
        also_nifti=True,
        progress=False,
        dicom=DicomWriteOptions(series_description="batch test"),
    )
    rows = _rows(result.csv_path)
    assert rows["S1"]["status"] == "ok" and rows["S1"]["output"].endswith("S1.dcm")
    # the NIfTI scan of the same folder: a recorded failure that names the reason, not a crash
    assert rows["h1"]["status"] == "failed" and "needs a DICOM series input" in rows["h1"]["error"]
    assert result.n_failed == 1
    ds = pydicom.dcmread(out / "S1.dcm")
    assert ds.Modality == ("SEG" if fmt == "dicom-seg" else "RTSTRUCT") and ds.SeriesDescription == "batch test"
    image = load_volume(inputs / "S1")
    nifti = load_volume(out / "S1.nii.gz")
    decoded = load_segmentation(out / "S1.dcm", image, predictor.classes)
    assert nifti.same_grid(image)
    np.testing.assert_array_equal(decoded.array, nifti.array)
    assert int(rows["S1"][f"voxels_{predictor.classes[1]}"]) == int((nifti.array == 1).sum())
    # resume: everything exists, nothing is redone
    again = predict_folder(predictor, inputs, out, output_format=fmt, also_nifti=True, progress=False)
    assert _rows(again.csv_path)["S1"]["status"] == "skipped"


def test_batch_fractional_seg_and_probability_maps(predictor: Predictor, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    predict_folder(
        predictor,
        SERIES,
        out,
        output_format="dicom-seg",
        save_probabilities=True,
        progress=False,
        dicom=DicomWriteOptions(fractional=True),
    )
    ds = pydicom.dcmread(out / "HippoCrop_Study1.dcm")
    assert ds.SegmentationType == "FRACTIONAL"
    maps = sorted(p.name for p in out.glob("HippoCrop_Study1_prob_*"))
    assert maps and all(m.endswith(".nii.gz") for m in maps)


def _case_folder(root: Path) -> tuple[Path, np.ndarray]:
    case = root / "patient1" / "study1"
    shutil.copytree(SERIES, case / "13_HCropVolume")
    image = load_volume(case / "13_HCropVolume")
    labels = (image.array > np.percentile(image.array, 90)).astype(np.uint8)
    return case, labels


@pytest.mark.parametrize("where", ["file", "folder"])
@pytest.mark.parametrize("kind", ["seg", "rtstruct"])
def test_dicom_layout_finds_seg_and_rtstruct_labels(kind: str, where: str, tmp_path: Path) -> None:
    case, labels = _case_folder(tmp_path / "set")
    image = load_volume(case / "13_HCropVolume")
    target = case / "mask_labels.dcm" if where == "file" else case / "mask_series" / "1.dcm"
    target.parent.mkdir(exist_ok=True)
    (save_dicom_seg if kind == "seg" else save_rtstruct)(labels, image, target, ["background", "hippocampus"])
    spec = discover_cases(DataConfig(root=tmp_path / "set", layout="dicom", classes=["background", "hippocampus"]))
    (c,) = spec.cases
    assert c.image.name == "13_HCropVolume"
    assert c.label == (target if where == "file" else target.parent)

    from medseg.data.label_reading import LabelReading
    from medseg.data.prepare import _CaseReader

    _, label, _ = _CaseReader(load_volume, 2, classes=["background", "hippocampus"]).read(c)
    # the same mask as a NIfTI label next to the series: what medseg trained from before
    nifti = save_mask(labels, image, tmp_path / "mask.nii.gz")
    _, direct, _ = _CaseReader(load_volume, 2).read(replace(c, label=nifti))
    np.testing.assert_array_equal(label, direct)
    assert label.sum() == labels.sum() > 0
    # A SEG / RTSTRUCT's segments are classes already: stored label values (for mask files) leave it alone.
    as_stored = LabelReading(values=(0, 255), unlisted_background=True)
    stored = _CaseReader(load_volume, 2, classes=["background", "hippocampus"], labels=as_stored).read(c)[1]
    np.testing.assert_array_equal(stored, label)


def test_dicom_layout_run_names_masks_by_case_and_evaluates_them(tmp_path: Path) -> None:
    """train -> predict -> evaluate on DICOM series with SEG labels: the validation case's SEG and NIfTI mask are
    named after its case folder (not its image series folder), so the evaluate stage pairs them with the labels."""
    from medseg.config import load_config
    from medseg.runner import RunLayout, run_stages

    root = tmp_path / "set"
    for patient, percentile in (("patient1", 90), ("patient2", 85)):
        case = root / patient / "study1"
        shutil.copytree(SERIES, case / "13_HCropVolume")
        image = load_volume(case / "13_HCropVolume")
        labels = (image.array > np.percentile(image.array, percentile)).astype(np.uint8)
        save_dicom_seg(labels, image, case / "mask_labels.dcm", ["background", "hippocampus"])
    cfg = load_config(
        Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml",
        [
            f"data.root={root}",
            "data.layout=dicom",
            "data.classes=[background, hippocampus]",
            "data.val_fraction=0.5",
            "model.base_features=4",
            "training.epochs=1",
            "training.max_minutes=null",
            "inference.output_format=dicom-seg",
            "inference.also_nifti=true",
            "evaluation.overlays=0",
            f"output.dir={tmp_path / 'run'}",
        ],
    )
    result = run_stages(cfg, ["train", "predict", "evaluate"])
    layout = RunLayout(cfg.output.dir)
    (val,) = result.train.val_cases
    assert val.id in {"patient1_study1", "patient2_study1"}
    rows = _rows(layout.predictions_csv)
    assert list(rows) == [val.id] and rows[val.id]["status"] == "ok"
    assert (layout.predictions / f"{val.id}.dcm").is_file() and (layout.predictions / f"{val.id}.nii.gz").is_file()
    assert result.evaluate is not None and result.evaluate["n_evaluated"] == 1
    # Every LO value is valid (<= 64 characters), though the checkpoint's path (the algorithm source) is longer.
    seg = pydicom.dcmread(layout.predictions / f"{val.id}.dcm")
    long = [e.tag for e in seg.iterall() if e.VR == "LO" and any(len(str(v)) > 64 for v in _values(e.value))]
    assert not long, long
    assert len(str(layout.best_checkpoint.resolve())) > 64


def _values(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
