"""Scan files read exactly or refused: colour NIfTI, degenerate and sheared affines, NaN voxels, read options.

Every bad file is built in the test from a real scan in sample_data/ (MSD hippocampus).
"""

from __future__ import annotations

import csv
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.config import Config
from medseg.data.fingerprint import FingerprintAccumulator
from medseg.errors import (
    BadCaseError,
    ColourImageError,
    DegenerateGeometryError,
    MultiChannelScanError,
    MultipleSeriesError,
    UnreadableScanError,
)
from medseg.evaluation.report import evaluate
from medseg.inference.batch import predict_folder
from medseg.inference.predictor import Predictor
from medseg.io import load_volume
from medseg.io.read_options import ReadOptions, set_read_options
from medseg.metrics import case_metrics
from tests.test_inference import make_checkpoint

CASE = "hippocampus_004"


@pytest.fixture
def image(sample_hippo: Path) -> nib.Nifti1Image:
    return nib.load(sample_hippo / "imagesTr" / f"{CASE}.nii.gz")


@pytest.fixture(autouse=True)
def _default_read_options() -> Iterator[None]:
    set_read_options(ReadOptions())
    yield
    set_read_options(ReadOptions())


def _save(data: np.ndarray, affine: np.ndarray, path: Path, header: nib.Nifti1Header | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, affine, header), path)
    return path


def test_rgb_nifti_is_refused_by_name(image: nib.Nifti1Image, tmp_path: Path) -> None:
    grey = np.asanyarray(image.dataobj).astype(np.float64)
    grey = np.round(255 * (grey - grey.min()) / (grey.max() - grey.min())).astype(np.uint8)
    rgb = np.zeros(grey.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    rgb["R"], rgb["G"], rgb["B"] = grey, grey // 2, 255 - grey
    path = _save(rgb, image.affine, tmp_path / "colour.nii.gz")
    assert nib.load(path).get_data_dtype().fields is not None  # really stored as NIfTI RGB24
    with pytest.raises(ColourImageError) as info:
        load_volume(path)
    assert str(path) in str(info.value)
    assert "colour voxels" in str(info.value) and "R, G, B" in str(info.value)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda a: a[:3, 1].__imul__(0.0), "voxel axis j zero length"),  # a zero column
        (lambda a: a[:3, 2].__setitem__(slice(None), a[:3, 0] * 2.0), "affine is singular"),  # collinear axes
    ],
)
def test_degenerate_affine_is_refused_at_load(image: nib.Nifti1Image, tmp_path: Path, change, reason: str) -> None:
    affine = image.affine.copy()
    change(affine)
    # The sform alone carries the bad matrix (a qform cannot even encode it); sform_code 1 makes it the one used.
    bad = nib.Nifti1Image(np.asanyarray(image.dataobj), image.affine)
    bad.set_sform(affine, code=1)
    path = tmp_path / "degenerate.nii.gz"
    nib.save(bad, path)
    np.testing.assert_array_equal(nib.load(path).affine, affine)
    with pytest.raises(DegenerateGeometryError, match=reason) as info:
        load_volume(path)
    assert str(path) in str(info.value)


def _sheared(image: nib.Nifti1Image, folder: Path) -> Path:
    """The scan with its k axis tilted by half a j voxel per slice (26.6 degrees): product of sizes 11.8 % high."""
    affine = image.affine.copy()
    affine[:3, 2] += 0.5 * affine[:3, 1] * np.linalg.norm(affine[:3, 2]) / np.linalg.norm(affine[:3, 1])
    folder.mkdir(parents=True, exist_ok=True)
    return _save(np.asanyarray(image.dataobj), affine, folder / f"{CASE}.nii.gz")


def test_sheared_scan_warns_and_volumes_use_det(
    image: nib.Nifti1Image, sample_hippo: Path, tmp_path: Path, caplog
) -> None:
    path = _sheared(image, tmp_path / "scans")
    with caplog.at_level(logging.WARNING, logger="medseg.io.grid_checks"):
        volume = load_volume(path)
    assert str(path) in caplog.text and "sheared (axes j, k are 26.565 degrees from a right angle)" in caplog.text
    assert "11.80 % too high" in caplog.text
    det = abs(np.linalg.det(volume.affine[:3, :3]))
    assert volume.voxel_volume == pytest.approx(det)
    assert float(np.prod(volume.spacing)) == pytest.approx(1.118034 * det, rel=1e-5)

    # Batch prediction: the table's volumes are voxel counts x |det|.
    predictor = Predictor.from_checkpoint(make_checkpoint(tmp_path / "best.pt"), device="cpu", precision="fp32")
    out = tmp_path / "out"
    assert predict_folder(predictor, [path], out, progress=False).n_ok == 1
    (row,) = list(csv.DictReader((out / "predictions.csv").open()))
    counted = [name for name in predictor.classes[1:] if int(row[f"voxels_{name}"]) > 0]
    assert counted, "the untrained model should label some voxels"
    for name in counted:
        assert float(row[f"volume_ml_{name}"]) == pytest.approx(int(row[f"voxels_{name}"]) * det / 1000, abs=1e-4)
    # QC measures the same volumes (its flags quote them beside the table's).
    mask = load_volume(out / f"{CASE}.nii.gz", label=True)
    predictor.qc_reference = {"classes": list(predictor.classes)}  # QC on; no reference numbers are needed here
    qc = predictor.assess_quality(volume, np.asarray(mask.array), None)
    for name in counted:
        assert qc.features[f"volume_ml_{name}"] == pytest.approx(float(row[f"volume_ml_{name}"]), abs=1e-4)
    # The research-script call gives the same; the product of the spacing (its fallback) is the 11.8 % too high.
    by_det = predictor.class_volumes(np.asarray(mask.array), voxel_mm3=volume.voxel_volume)
    by_spacing = predictor.class_volumes(np.asarray(mask.array), volume.spacing)
    for name in counted:
        assert by_det[name][1] == pytest.approx(float(row[f"volume_ml_{name}"]), abs=1e-4)
        assert by_spacing[name][1] == pytest.approx(1.118034 * by_det[name][1], rel=1e-5)

    # Evaluation of a label on the sheared grid: volume from |det| too.
    labels = np.asanyarray(nib.load(sample_hippo / "labelsTr" / f"{CASE}.nii.gz").dataobj).astype(np.uint8)
    (tmp_path / "gt").mkdir()
    gt = _save(labels, volume.affine, tmp_path / "gt" / f"{CASE}.nii.gz")
    evaluate([(CASE, gt, gt)], ["background", "anterior", "posterior"], tmp_path / "eval", overlays=0)
    rows = list(csv.DictReader((tmp_path / "eval" / "metrics.csv").open()))
    for r in rows:
        n = int((labels == ["background", "anterior", "posterior"].index(r["class"])).sum())
        assert float(r["vol_gt_ml"]) == pytest.approx(n * det / 1000, rel=1e-6)

    # The plan's per-class volumes of training labels on a sheared grid: |det| too.
    fingerprint = FingerprintAccumulator(["background", "anterior", "posterior"])
    fingerprint.add(CASE, np.asarray(volume.array), labels, volume.spacing, volume.voxel_volume)
    volumes = fingerprint.result().class_volumes_ml()
    assert volumes["anterior"]["median"] == pytest.approx(int((labels == 1).sum()) * det / 1000, rel=1e-6)


def test_case_metrics_volume_uses_given_voxel_volume() -> None:
    gt = np.zeros((4, 4, 4), dtype=np.uint8)
    gt[1:3, 1:3, 1:3] = 1
    (row,) = case_metrics(gt, gt, (1.0, 1.0, 2.0), ["bg", "fg"])
    assert row["vol_gt_ml"] == pytest.approx(8 * 2.0 / 1000)
    (row,) = case_metrics(gt, gt, (1.0, 1.0, 2.0), ["bg", "fg"], voxel_mm3=1.5)
    assert row["vol_gt_ml"] == pytest.approx(8 * 1.5 / 1000)


def test_nan_voxels_are_described_and_can_be_read_as_zero(image: nib.Nifti1Image, tmp_path: Path, caplog) -> None:
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[:, :, -3:] = np.nan  # what a resampling tool leaves outside the source's field of view
    path = _save(data, image.affine, tmp_path / "nan.nii.gz")
    n = data.shape[0] * data.shape[1] * 3
    with pytest.raises(UnreadableScanError) as info:
        load_volume(path)
    message = str(info.value)
    assert str(path) in message
    assert f"{n} NaN voxel(s) of {data.size}" in message
    k = data.shape[2]
    assert f"k {k - 3}..{k - 1}; in 3 of {k} slices along k" in message
    assert "nan_as_zero=True" in message and "data.nan_as_zero" in message and "--set data.nan_as_zero=true" in message

    with caplog.at_level(logging.WARNING, logger="medseg.io._arrays"):
        volume = load_volume(path, nan_as_zero=True)
    assert f"{n} NaN voxel(s)" in caplog.text and str(path) in caplog.text
    assert np.all(volume.array[:, :, -3:] == 0)
    np.testing.assert_array_equal(volume.array[:, :, :-3], data[:, :, :-3])
    set_read_options(ReadOptions(nan_as_zero=True))  # what a run does with data.nan_as_zero: true
    assert np.isfinite(load_volume(path).array).all()
    with pytest.raises(UnreadableScanError):
        load_volume(path, nan_as_zero=False)  # the explicit argument wins


def test_channel_hint_names_the_config_key_and_the_key_works(image: nib.Nifti1Image, tmp_path: Path) -> None:
    data = np.asanyarray(image.dataobj)
    path = _save(np.stack([data, data * 2], axis=-1), image.affine, tmp_path / "two_channels.nii.gz")
    with pytest.raises(UnreadableScanError, match=r"channel=N in Python, or the config key data\.channel"):
        load_volume(path)
    config = Config.model_validate({"data": {"channel": 1, "series": "T1post", "nan_as_zero": True}})
    set_read_options(
        ReadOptions(channel=config.data.channel, series=config.data.series, nan_as_zero=config.data.nan_as_zero)
    )
    np.testing.assert_array_equal(load_volume(path).array, data * 2)
    # A default channel applies only to scans that have channels: a 3D scan still reads.
    single = _save(data, image.affine, tmp_path / "single.nii.gz")
    np.testing.assert_array_equal(load_volume(single).array, data)


def test_a_label_file_with_channels_is_refused_even_with_data_channel_set(sample_hippo: Path, tmp_path: Path) -> None:
    """A one-hot (or per-class mask stack) label file: refused as a label, in training, in evaluation and from an
    NRRD with vector pixels, and data.channel, which picks an image's channel, does not pick one of a label's
    (channel 1 of a one-hot stack would train class 1 alone, the others as background)."""
    import SimpleITK as sitk

    from medseg.config import DataConfig, PreprocessingConfig
    from medseg.data.cases import discover_cases
    from medseg.data.prepare import prepare_training_data

    root = tmp_path / "onehot"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    label = nib.load(sample_hippo / "labelsTr" / f"{CASE}.nii.gz")
    classes = np.asarray(label.dataobj).astype(np.uint8)
    onehot = np.stack([classes == k for k in range(3)], axis=-1).astype(np.uint8)
    shutil.copy(sample_hippo / "imagesTr" / f"{CASE}.nii.gz", root / "images" / f"{CASE}.nii.gz")
    stack = _save(onehot, label.affine, root / "labels" / f"{CASE}.nii.gz")
    spec = discover_cases(DataConfig(root=root, layout="glob", classes=["background", "Anterior", "Posterior"]))
    reason = r"it is a label file with 3 channels \(shape \(\d+, \d+, \d+, 3\)\), e\.g\. one-hot"
    for options in (ReadOptions(), ReadOptions(channel=1)):
        set_read_options(options)
        with pytest.raises(BadCaseError, match=reason) as err:
            prepare_training_data(spec.cases, [], 3, PreprocessingConfig(), reader=load_volume)
        assert str(stack) in str(err.value) and "np.argmax(data, axis=3)" in str(err.value)
        with pytest.raises(MultiChannelScanError, match=reason):
            load_volume(stack, label=True)
        # as ground truth in evaluation: the case fails with the same reason, the others are scored
        plain = _save(classes, label.affine, tmp_path / "plain.nii.gz")
        summary = evaluate([("stack", plain, stack), ("ok", plain, plain)], spec.classes, tmp_path / "ev", overlays=0)
        assert [f["case"] for f in summary["failed_cases"]] == ["stack"] and summary["n_evaluated"] == 1
        assert "label file with 3 channels" in summary["failed_cases"][0]["error"]
    # An image keeps its reading: data.channel picks its channel, as before.
    assert np.array_equal(load_volume(stack).array, onehot[..., 1])

    # NRRD with vector pixels (per-class components), through SimpleITK
    nrrd = tmp_path / "stack.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.moveaxis(onehot, 3, 0).T.copy(), isVector=True), str(nrrd))
    set_read_options(ReadOptions())
    with pytest.raises(MultiChannelScanError, match=r"label file with 3 channels .*which channel is which class"):
        load_volume(nrrd, label=True)


def test_series_hint_names_the_config_key_and_the_key_works(hippocrop_dir: Path, tmp_path: Path) -> None:
    both = tmp_path / "two_series"
    both.mkdir()
    for study in ("Study1", "Study3"):
        for f in next((hippocrop_dir / study).iterdir()).iterdir():
            shutil.copy(f, both / f"{study}_{f.name}")
    with pytest.raises(MultipleSeriesError, match=r"series=\.\.\. in Python, or the config key data\.series") as info:
        load_volume(both)
    uid = str(info.value).split("\n  ")[1].split()[0]
    set_read_options(ReadOptions(series=uid))
    chosen = load_volume(both)
    assert chosen.shape[2] in (32, 40)
    # A default series only chooses between several: a folder holding one series ignores it.
    set_read_options(ReadOptions(series="no such series"))
    assert load_volume(next((hippocrop_dir / "Study1").iterdir())).shape[2] in (32, 40)
